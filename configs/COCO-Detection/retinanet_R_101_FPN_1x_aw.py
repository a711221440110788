# Twin of retinanet_R_101_FPN_1x_aw.yaml.
from .retinanet_R_101_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aw.enabled = True  # AW-full: one attention row per output channel
