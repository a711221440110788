#!/usr/bin/env python
"""Train or evaluate a Detectron2 model with aw_detection's backbones.

    tools/train_net.py --config-file configs/demo/shapes_R_18_FPN.yaml
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    tools/train_net.py --config-file CFG --dataset mine_train=a.json:imgs ...
"""
from detectron2.engine import default_argument_parser, launch

import aw_detection  # noqa: F401  (registers backbones and datasets)
from aw_detection.data import register_datasets
from aw_detection.engine import AWCheckpointer, Trainer, setup


def main(args):
    register_datasets(args.dataset)  # in every worker: launch() spawns fresh processes
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AWCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parser():
    p = default_argument_parser()
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=ANNOTATIONS.json:IMAGE_DIR",
                   help="register a COCO-format dataset under NAME (repeatable)")
    return p


if __name__ == "__main__":
    args = parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
