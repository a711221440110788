"""An image classifier over this project's backbones: the config's Detectron2 ResNet (built
by ``build_aw_resnet_backbone``: same blocks, parameter names and attention variants as the
detectors) + global average pool + linear head, registered as the meta-architecture
``ImageClassifier``.

Its state dict is ``backbone.<ResNet names>`` + ``head.weight/bias``: a checkpoint loads
into a detector with the same backbone (see :mod:`aw_detection.checkpoint.backbone_weights`).
"""
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from aw_detection.modeling.backbone import build_aw_resnet_backbone

__all__ = ["ImageClassifier"]


@META_ARCH_REGISTRY.register()
class ImageClassifier(nn.Module):
    """Input: {"image": (N, 3, H, W) 0-255 tensor in INPUT.FORMAT, "label": (N,) class
    indices}. Training returns {"loss_cls": ...}; evaluation returns (N, K) logits."""

    def __init__(self, cfg):
        super().__init__()
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]  # what the pool reads, whatever detection uses
        self.backbone = build_aw_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        channels = self.backbone.output_shape()["res5"].channels
        self.head = nn.Linear(channels, cfg.MODEL.CLASSIFIER.NUM_CLASSES)
        # torchvision's initialisation of the ImageNet head.
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.label_smoothing = cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING
        self.input_format = cfg.INPUT.FORMAT
        # As in Detectron2's GeneralizedRCNN: not saved, set by the config.
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self):
        return self.pixel_mean.device

    def logits(self, images):
        images = (images.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
        features = self.backbone(images)["res5"]
        return self.head(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def forward(self, batched_inputs):
        logits = self.logits(batched_inputs["image"])
        if not self.training:
            return logits
        labels = batched_inputs["label"].to(self.device)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        get_event_storage().put_scalar(
            "train_top1", (logits.argmax(1) == labels).float().mean().item())
        return {"loss_cls": loss}
