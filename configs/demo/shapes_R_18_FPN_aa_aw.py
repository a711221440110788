# LazyConfig twin of shapes_R_18_FPN_aa_aw.yaml.
from .shapes_R_18_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.aa.enabled = True
model.backbone.bottom_up.aw.enabled = True
model.backbone.bottom_up.aw.attention_groups = 8  # AW-lite for the CPU demo (see the YAML)
train.output_dir = "output/shapes_R_18_FPN_aa_aw_lazy"
