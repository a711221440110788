# LazyConfig twin of shapes_retinanet_R_18_FPN.yaml (same model; train it with
# tools/lazyconfig_train_net.py). Detectron2's lazy training loop has no gradient clipping,
# so unlike the YAML recipe this one trains without it.
from detectron2.layers import ShapeSpec

from ..common.models.retinanet import model
from .shapes_R_18_FPN import dataloader, lr_multiplier, optimizer, train, variants

model.pixel_std = [57.375, 57.120, 58.395]  # unit-variance input: no pretrained weights
model.backbone.bottom_up.depth = 18
model.backbone.bottom_up.res2_out_channels = 64
model.backbone.bottom_up.norm = "GN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.norm = "GN"
model.backbone.top_block.in_channels = 512  # res5 of ResNet-18
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64, 64, 64]
model.head.norm = "GN"
model.num_classes = 5
# Half the COCO sizes (objects are 20-80 px at 160 px): x * 2^(0, 1/3, 2/3), x = 16..256.
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]]

train.output_dir = "output/shapes_retinanet_R_18_FPN_lazy"
