# Faster R-CNN FPN: Detectron2's Mask R-CNN FPN without the mask branch, over the attention
# ResNet (Detectron2 ships no Faster R-CNN model in common/models).
from .mask_rcnn_fpn import model

for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)
