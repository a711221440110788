"""Classification pre-training of the attention backbones (the paper's ImageNet protocol):
the ``ImageClassifier`` meta-architecture (registered on import), ImageFolder data, the
embedded shapes classification set, and the trainer used by tools/train_classification.py."""
from .data import check_image_folder, resolve_image_folder
from .engine import ClassificationTrainer, evaluate_classifier, setup_classification
from .model import ImageClassifier
from .shapes import SHAPES_CLASSIFICATION, ensure_shapes_classification

__all__ = ["ImageClassifier", "ClassificationTrainer", "setup_classification",
           "evaluate_classifier", "check_image_folder", "resolve_image_folder",
           "SHAPES_CLASSIFICATION", "ensure_shapes_classification"]
