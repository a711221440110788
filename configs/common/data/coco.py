# Detectron2's COCO data loaders and evaluator (its model zoo's common/data/coco.py).
from detectron2 import model_zoo

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
