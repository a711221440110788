# Twin of retinanet_R_50_FPN_3x.yaml.
from ..common.coco_schedule import lr_multiplier_3x as lr_multiplier
from .retinanet_R_50_FPN_1x import dataloader, model, optimizer, train, variants

train.max_iter = 270000
