# Twin of retinanet_R_101_FPN_1x_se.yaml.
from .retinanet_R_101_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.act_attention.type = "SE"
