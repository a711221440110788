#!/usr/bin/env python
"""Train or evaluate a Detectron2 model with aw_detection's backbones.

    tools/train_net.py --config-file configs/demo/shapes_R_18_FPN.yaml
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    tools/train_net.py --config-file CFG --dataset mine_train=a.json:imgs \\
        --dataset mine_val=b.json:imgs DATASETS.TRAIN '("mine_train",)' DATASETS.TEST '("mine_val",)'
"""
from aw_detection.engine.cli import launch_main
from aw_detection.engine.train_net import main, parser

if __name__ == "__main__":
    launch_main(main, parser().parse_args())
