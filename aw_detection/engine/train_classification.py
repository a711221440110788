"""Pre-train (or evaluate) a backbone as an image classifier: the entry point of
tools/train_classification.py (usage there) and of the study's pre-training runs."""

from detectron2.engine import default_argument_parser

import aw_detection  # noqa: F401  (registers the classifier and backbones)
from aw_detection.engine.classification import ClassificationTrainer, setup_classification
from aw_detection.engine.cli import launch_main, train_or_evaluate


def main(args):
    return train_or_evaluate(args, setup_classification, ClassificationTrainer)


def parser():
    p = default_argument_parser()
    p.add_argument("--data-dir", metavar="DIR",
                   help="ImageFolder root with train/<class>/ and val/<class>/ (default: the "
                        "config's DATASETS.IMAGE_FOLDER)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


if __name__ == "__main__":  # python -m, as tools/study.py launches runs
    launch_main(main, parser().parse_args())
