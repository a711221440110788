# Imported for registration with Detectron2's BACKBONE_REGISTRY.
from .backbone import build_aw_resnet_backbone, build_aw_resnet_fpn_backbone
