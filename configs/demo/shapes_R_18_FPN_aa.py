# LazyConfig twin of shapes_R_18_FPN_aa.yaml.
from .shapes_R_18_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aa.enabled = True
train.output_dir = "output/shapes_R_18_FPN_aa_lazy"
