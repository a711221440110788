# LazyConfig twin of shapes_retinanet_R_18_FPN_se.yaml.
from .shapes_retinanet_R_18_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.act_attention.type = "SE"
train.output_dir = "output/shapes_retinanet_R_18_FPN_se_lazy"
