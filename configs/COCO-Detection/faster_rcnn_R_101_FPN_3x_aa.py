# Twin of faster_rcnn_R_101_FPN_3x_aa.yaml.
from .faster_rcnn_R_101_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aa.enabled = True  # res5 by default
