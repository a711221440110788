"""C4 models' res5 with attention: Detectron2's Res5ROIHeads, res5 built from our blocks.

In a C4 detector the backbone stops at res4 and res5 runs in the ROI head on every box's
pooled features. ``AttentionRes5ROIHeads`` builds that res5 exactly as ``Res5ROIHeads`` does
(same parameter names: R-50.pkl / R-101.pkl load into it), swapping only the block class for
the attention blocks of the stages MODEL.AW / AA / ACT_ATTENTION name, so a fresh AW head
computes the plain head.
"""
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from .backbone.blocks import AttentionBottleneckBlock
from .backbone.resnet import stage_attention

__all__ = ["AttentionRes5ROIHeads"]


@ROI_HEADS_REGISTRY.register()
class AttentionRes5ROIHeads(Res5ROIHeads):
    @classmethod
    def _build_res5_block(cls, cfg):
        attention = stage_attention(cfg, "res5")
        if not attention:
            return super()._build_res5_block(cfg)
        res = cfg.MODEL.RESNETS
        out_channels = res.RES2_OUT_CHANNELS * 8  # res5 is 8x res2, as in Detectron2
        blocks = ResNet.make_stage(
            AttentionBottleneckBlock, 3, stride_per_block=[2, 1, 1], in_channels=out_channels // 2,
            bottleneck_channels=res.NUM_GROUPS * res.WIDTH_PER_GROUP * 8, out_channels=out_channels,
            num_groups=res.NUM_GROUPS, norm=res.NORM, stride_in_1x1=res.STRIDE_IN_1X1, **attention)
        return nn.Sequential(*blocks), out_channels
