"""Train or evaluate a Detectron2 model with aw_detection's backbones: the entry point of
tools/train_net.py (usage there) and of the runs tools/study.py launches."""

from detectron2.engine import default_argument_parser

import aw_detection  # noqa: F401  (registers backbones and datasets)
from aw_detection.engine.cli import add_dataset_arguments, launch_main, train_or_evaluate
from aw_detection.engine import Trainer, setup


def main(args):
    # Runs in every worker (launch() spawns fresh processes), so datasets register here.
    return train_or_evaluate(args, setup, Trainer)


def parser():
    return add_dataset_arguments(default_argument_parser())


if __name__ == "__main__":  # python -m, as tools/study.py launches runs
    launch_main(main, parser().parse_args())
