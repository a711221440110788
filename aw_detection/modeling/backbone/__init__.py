from .resnet import (
    AttentionBasicBlock,
    AttentionBottleneckBlock,
    build_aw_resnet_backbone,
    build_aw_resnet_fpn_backbone,
)
