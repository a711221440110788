# Twin of faster_rcnn_R_50_FPN_1x_se_aw.yaml.
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aw.enabled = True
model.backbone.bottom_up.act_attention.type = "SE"
