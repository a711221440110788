"""aw_detection: weight-shaped attention (AW-convolution) and attention-augmented convolution
for Detectron2. Importing it registers the backbones and the embedded shapes datasets."""
from .config import add_aw_config, load_config
from . import data, modeling  # noqa: F401  (registration only)

__version__ = "0.1.0"
