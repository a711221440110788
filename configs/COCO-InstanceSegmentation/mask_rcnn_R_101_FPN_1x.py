# Twin of mask_rcnn_R_101_FPN_1x.yaml.
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train, variants

model.backbone.bottom_up.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
