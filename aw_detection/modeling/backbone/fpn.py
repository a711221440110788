"""Detectron2's FPN over the attention ResNet: the Faster/Mask R-CNN flavour (P2-P6,
``LastLevelMaxPool``) and the RetinaNet flavour (P3-P7, ``LastLevelP6P7`` from C5), as
Detectron2's ``build_resnet_fpn_backbone`` and ``build_retinanet_resnet_fpn_backbone``."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ...errors import ConfigError
from .resnet import build_aw_resnet_backbone

__all__ = ["build_aw_resnet_fpn_backbone", "build_aw_retinanet_resnet_fpn_backbone"]


def _fpn(cfg, bottom_up, top_block):
    if cfg.MODEL.RESNETS.RES5_DILATION != 1:
        raise ConfigError(f"MODEL.RESNETS.RES5_DILATION={cfg.MODEL.RESNETS.RES5_DILATION} keeps "
                          "res5 at stride 16, but an FPN needs each level at twice the stride of "
                          "the one before: use RES5_DILATION 1 with FPN backbones")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_aw_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's FPN (P2-P6) over :func:`build_aw_resnet_backbone`."""
    return _fpn(cfg, build_aw_resnet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_aw_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's RetinaNet FPN (P3-P7; P6 from C5, P7 from P6) over
    :func:`build_aw_resnet_backbone`."""
    bottom_up = build_aw_resnet_backbone(cfg, input_shape)
    if "res5" not in bottom_up.output_shape():
        raise ConfigError("RetinaNet's P6 is computed from res5: MODEL.RESNETS.OUT_FEATURES "
                          f"must include res5, got {list(cfg.MODEL.RESNETS.OUT_FEATURES)}")
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    top_block = LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS)
    return _fpn(cfg, bottom_up, top_block)
