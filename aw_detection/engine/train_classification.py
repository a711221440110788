"""Pre-train (or evaluate) a backbone of this project as an image classifier on an ImageFolder
(the entry point of tools/train_classification.py and of the study runs).

    tools/train_classification.py --config-file configs/classification/shapes_R_18_aw.yaml
    tools/train_classification.py --num-gpus 8 --config-file configs/classification/imagenet_R_50_aw.yaml \\
        --data-dir /data/imagenet
    tools/train_classification.py --config-file CFG --data-dir D --eval-only MODEL.WEIGHTS out/model_final.pth

Its OUTPUT_DIR/model_final.pth is MODEL.WEIGHTS for the detection configs with the same
backbone; OUTPUT_DIR/eval_results.json holds {"top1": %, "top5": %}.
"""

from detectron2.engine import default_argument_parser

import aw_detection  # noqa: F401  (registers the classifier and backbones)
from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.engine.classification import ClassificationTrainer, setup_classification
from aw_detection.engine.cli import launch_main, user_errors


def main(args):
    run = {}
    with user_errors(args.debug, run):
        cfg = setup_classification(args)
        run["output_dir"] = cfg.OUTPUT_DIR
        if args.eval_only:
            model = ClassificationTrainer.build_model(cfg)
            AWCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume
            )
            return ClassificationTrainer.test(cfg, model)
        trainer = run["trainer"] = ClassificationTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def parser():
    p = default_argument_parser()
    p.add_argument("--data-dir", metavar="DIR",
                   help="ImageFolder root with train/<class>/ and val/<class>/ (default: the "
                        "config's DATASETS.IMAGE_FOLDER)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


if __name__ == "__main__":  # python -m, as tools/study.py launches runs
    launch_main(main, parser().parse_args())
