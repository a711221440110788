# Detectron2's RetinaNet (common/models/retinanet.py: FPN P3-P7 with LastLevelP6P7 from C5)
# over the attention ResNet.
from detectron2 import model_zoo

from .attention_resnet import bottom_up

model = model_zoo.get_config("common/models/retinanet.py").model
bottom_up.out_features = ["res3", "res4", "res5"]
model.backbone.bottom_up = bottom_up
