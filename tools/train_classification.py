#!/usr/bin/env python
"""Pre-train (or evaluate) a backbone of this project as an image classifier on an ImageFolder.

    tools/train_classification.py --config-file configs/classification/shapes_R_18_aw.yaml
    tools/train_classification.py --num-gpus 8 --config-file configs/classification/imagenet_R_50_aw.yaml \\
        --data-dir /data/imagenet
    tools/train_classification.py --config-file CFG --data-dir D --eval-only MODEL.WEIGHTS out/model_final.pth

Its OUTPUT_DIR/model_final.pth is MODEL.WEIGHTS for the detection configs with the same
backbone; OUTPUT_DIR/eval_results.json holds {"top1": %, "top5": %}.
"""
from aw_detection.engine.cli import launch_main
from aw_detection.engine.train_classification import main, parser

if __name__ == "__main__":
    launch_main(main, parser().parse_args())
