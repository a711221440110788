# Twin of mask_rcnn_R_50_FPN_1x_aa_aw.yaml.
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aa.enabled = True
model.backbone.bottom_up.aw.enabled = True  # res3-res5; in res5 the AA conv branch is AW
