#!/usr/bin/env python
"""Train or evaluate a LazyConfig (.py) model, as Detectron2's tools/lazyconfig_train_net.py.

    tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/retinanet_R_50_FPN_1x.py variant=aa
    tools/lazyconfig_train_net.py --config-file configs/demo/shapes_R_18_FPN.py variant=aw train.max_iter=100
    tools/lazyconfig_train_net.py --config-file CFG --eval-only train.init_checkpoint=out/model_final.pth
    tools/lazyconfig_train_net.py --config-file CFG --dataset mine_train=a.json:imgs \\
        --dataset mine_val=b.json:imgs dataloader.train.dataset.names=mine_train \\
        dataloader.test.dataset.names=mine_val model.roi_heads.num_classes=3

The config provides model, dataloader.{train,test,evaluator}, optimizer, lr_multiplier and
train (Detectron2's common/train.py). Overrides are KEY=VALUE. Weights load through
aw_detection's checkpointer (one line for the attention parameters that baseline/ImageNet
weights lack; --eval-only refuses weights that do not fit). Evaluation writes
train.output_dir/eval_results.json.
"""
import logging
import os

import torch

from detectron2.config import instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import aw_detection  # noqa: F401  (registers backbones and datasets)
from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.engine.cli import DropDivergedTraceback, add_dataset_arguments, launch_main, user_errors
from aw_detection.data import prepare_datasets
from aw_detection.errors import UserError
from aw_detection.evaluation import write_eval_results
from aw_detection.lazy_config import check_lazy_datasets, lazy_dataset_names, load_lazy_config

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                   instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
        name = lazy_dataset_names(cfg.dataloader.test)[0]
        write_eval_results({name: results}, cfg.train.output_dir)
    return results


def ddp(model, cfg):
    # Detectron2's default device_ids=[rank] is rejected by DDP for CPU modules.
    on_cuda = next(model.parameters()).device.type == "cuda"
    return create_ddp_model(model, device_ids=[comm.get_local_rank()] if on_cuda else None,
                            **cfg.train.ddp)


def do_train(args, cfg, run):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = ddp(model, cfg)
    trainer = run["trainer"] = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer)
    checkpointer = AWCheckpointer(model, cfg.train.output_dir, optimizer=optimizer, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    # Runs in every worker (launch() spawns fresh processes), so datasets register here.
    run = {"lower": "Lower optimizer.lr.", "restart": "train.init_checkpoint={}"}
    with user_errors(args.debug, run):
        cfg = load_lazy_config(args.config_file, args.opts)
        run["output_dir"] = cfg.train.output_dir
        need_masks = "mask_head" in cfg.model.get("roi_heads", {})
        prepare_datasets(args.dataset, lazy_dataset_names(cfg.dataloader.train),
                         os.path.join(cfg.train.output_dir, "datasets"), need_masks)
        check_lazy_datasets(cfg, training=not args.eval_only)
        if args.eval_only and not cfg.train.init_checkpoint:
            raise UserError("--eval-only needs trained weights: add the override "
                            "train.init_checkpoint=path/to/model_final.pth")
        default_setup(cfg, args)
        if cfg.train.device == "cpu" and comm.get_world_size() > 1:
            # Processes share the cores: more threads each only contend.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
        logging.getLogger("detectron2.engine.train_loop").addFilter(DropDivergedTraceback())
        if args.eval_only:
            model = instantiate(cfg.model).to(cfg.train.device).eval()
            AWCheckpointer(model, strict=True).load(cfg.train.init_checkpoint)
            return do_test(cfg, ddp(model, cfg))
        do_train(args, cfg, run)


def parser():
    return add_dataset_arguments(default_argument_parser())


if __name__ == "__main__":
    launch_main(main, parser().parse_args())
