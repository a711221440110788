# Detectron2's optimizers (its model zoo's common/optim.py), so that configs here import them
# as Detectron2's own configs do: from ..common.optim import SGD as optimizer
from detectron2 import model_zoo

_optim = model_zoo.get_config("common/optim.py")
SGD = _optim.SGD
AdamW = _optim.AdamW
