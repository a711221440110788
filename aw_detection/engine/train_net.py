"""Train or evaluate a Detectron2 model with aw_detection's backbones (the entry point of
tools/train_net.py and of the runs tools/study.py launches).

    tools/train_net.py --config-file configs/demo/shapes_R_18_FPN.yaml
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    tools/train_net.py --config-file CFG --dataset mine_train=a.json:imgs \\
        --dataset mine_val=b.json:imgs DATASETS.TRAIN '("mine_train",)' DATASETS.TEST '("mine_val",)'
"""

from detectron2.engine import default_argument_parser

import aw_detection  # noqa: F401  (registers backbones and datasets)
from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.engine.cli import add_dataset_arguments, launch_main, user_errors
from aw_detection.engine import Trainer, setup


def main(args):
    # Runs in every worker (launch() spawns fresh processes), so datasets register here.
    run = {}
    with user_errors(args.debug, run):
        cfg = setup(args)
        run["output_dir"] = cfg.OUTPUT_DIR
        if args.eval_only:
            model = Trainer.build_model(cfg)
            AWCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume
            )
            return Trainer.test(cfg, model)
        trainer = run["trainer"] = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def parser():
    return add_dataset_arguments(default_argument_parser())


if __name__ == "__main__":  # python -m, as tools/study.py launches runs
    launch_main(main, parser().parse_args())
