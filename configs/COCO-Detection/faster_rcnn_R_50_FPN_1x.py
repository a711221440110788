# Twin of faster_rcnn_R_50_FPN_1x.yaml in Detectron2's LazyConfig layout (train it with
# tools/lazyconfig_train_net.py).
from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train
from ..common.variants import variants  # noqa: F401  (variant=NAME on the command line)

dataloader.train.mapper.use_instance_mask = False
model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
