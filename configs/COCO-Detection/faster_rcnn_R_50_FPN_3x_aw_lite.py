# Twin of faster_rcnn_R_50_FPN_3x_aw_lite.yaml.
from .faster_rcnn_R_50_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aw.enabled = True
model.backbone.bottom_up.aw.attention_groups = 8  # AW-lite: 8 rows, each shared by C_out/8 channels
