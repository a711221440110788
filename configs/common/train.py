# Detectron2's training options for tools/lazyconfig_train_net.py (its common/train.py).
from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
