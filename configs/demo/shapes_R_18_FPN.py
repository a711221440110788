# LazyConfig twin of shapes_R_18_FPN.yaml (same model; train it with
# tools/lazyconfig_train_net.py). Detectron2's lazy training loop has no gradient clipping,
# so unlike the YAML recipe this one trains without it.
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from fvcore.common.param_scheduler import MultiStepParamScheduler
from detectron2.solver import WarmupParamScheduler

from ..common.data.coco import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..common.variants import variants as _coco_variants

# variant=NAME as for the COCO configs, with the demo YAMLs' AW-lite: 16 rows (8 with AA, whose
# conv branch in res5 has 456 filters); see shapes_R_18_FPN_aw.yaml.
variants = {name: {section: dict(settings) for section, settings in v.items()}
            for name, v in _coco_variants.items() if name != "aw_lite"}
for name in ("aw", "se_aw", "cbam_aw"):
    variants[name]["aw"]["attention_groups"] = 16
variants["aa_aw"]["aw"]["attention_groups"] = 8

# From scratch on CPU: ResNet-18, GroupNorm everywhere, a 4conv1fc box head, 64-wide FPN.
model.pixel_std = [57.375, 57.120, 58.395]  # unit-variance input: no pretrained weights
model.backbone.bottom_up.depth = 18
model.backbone.bottom_up.res2_out_channels = 64
model.backbone.bottom_up.norm = "GN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.norm = "GN"
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (500, 500)  # (training, test)
model.proposal_generator.post_nms_topk = (100, 200)
model.roi_heads.num_classes = 5
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.conv_dims = [64, 64, 64, 64]
model.roi_heads.box_head.conv_norm = "GN"
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)

dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(144, 160, 176), sample_style="choice", max_size=240),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=160, max_size=240)]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

optimizer.lr = 0.001
optimizer.weight_decay = 0.0001
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[640, 760, 800]),
    warmup_length=50 / 800,
    warmup_method="linear",
    warmup_factor=0.001,
)

train.max_iter = 800
train.device = "cpu"
train.seed = 42
train.eval_period = 0  # evaluate once, after training
train.checkpointer.period = 400
train.output_dir = "output/shapes_R_18_FPN_lazy"
