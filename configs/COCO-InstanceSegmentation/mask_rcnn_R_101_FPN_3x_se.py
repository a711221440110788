# Twin of mask_rcnn_R_101_FPN_3x_se.yaml.
from .mask_rcnn_R_101_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.act_attention.type = "SE"
