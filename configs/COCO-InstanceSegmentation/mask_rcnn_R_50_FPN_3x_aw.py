# Twin of mask_rcnn_R_50_FPN_3x_aw.yaml.
from .mask_rcnn_R_50_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aw.enabled = True  # AW-full: one attention row per output channel
