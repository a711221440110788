# Detectron2's Mask R-CNN FPN (common/models/mask_rcnn_fpn.py) over the attention ResNet.
from detectron2 import model_zoo

from .attention_resnet import bottom_up

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = bottom_up
