# Twin of mask_rcnn_R_101_FPN_1x_se_aw.yaml.
from .mask_rcnn_R_101_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aw.enabled = True
model.backbone.bottom_up.act_attention.type = "SE"
