# Detectron2's 1x / 3x schedules (its model zoo's common/coco_schedule.py).
from detectron2 import model_zoo

_schedule = model_zoo.get_config("common/coco_schedule.py")
lr_multiplier_1x = _schedule.lr_multiplier_1x
lr_multiplier_3x = _schedule.lr_multiplier_3x
