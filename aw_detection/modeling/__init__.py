# Imported for registration with Detectron2's BACKBONE_REGISTRY and META_ARCH_REGISTRY.
from .backbone import (
    attention_resnet,
    build_aw_resnet_backbone,
    build_aw_resnet_fpn_backbone,
    build_aw_retinanet_resnet_fpn_backbone,
)
from .classifier import ImageClassifier
from .roi_heads import AttentionRes5ROIHeads
