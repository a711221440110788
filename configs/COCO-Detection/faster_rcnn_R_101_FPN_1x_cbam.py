# Twin of faster_rcnn_R_101_FPN_1x_cbam.yaml.
from .faster_rcnn_R_101_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.act_attention.type = "CBAM"
