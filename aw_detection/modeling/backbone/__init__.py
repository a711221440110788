from .blocks import AttentionBasicBlock, AttentionBottleneckBlock
from .fpn import build_aw_resnet_fpn_backbone, build_aw_retinanet_resnet_fpn_backbone
from .resnet import attention_defaults, attention_resnet, build_aw_resnet_backbone, resnet_arguments

__all__ = [k for k in globals().keys() if not k.startswith("_")]
