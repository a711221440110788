# Twin of retinanet_R_101_FPN_3x_aa_aw.yaml.
from .retinanet_R_101_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aa.enabled = True
model.backbone.bottom_up.aw.enabled = True  # res3-res5; in res5 the AA conv branch is AW
