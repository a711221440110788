"""Loading weights: Detectron2's checkpointer with the attention parameters' rules, and backbone
weights from ImageNet classifiers (ours, Detectron2's .pkl, torchvision's)."""
from .backbone_weights import (
    adapt_backbone_checkpoint,
    apply_torchvision_settings,
    is_torchvision_resnet,
    torchvision_to_detectron2,
)
from .checkpointer import AWCheckpointer, is_attention_param

__all__ = ["AWCheckpointer", "adapt_backbone_checkpoint", "apply_torchvision_settings",
           "is_attention_param", "is_torchvision_resnet", "torchvision_to_detectron2"]
