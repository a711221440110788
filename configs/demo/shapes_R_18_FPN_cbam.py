# LazyConfig twin of shapes_R_18_FPN_cbam.yaml.
from .shapes_R_18_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.act_attention.type = "CBAM"
train.output_dir = "output/shapes_R_18_FPN_cbam_lazy"
