"""The Detectron2 trainer and setup used by tools/train_net.py."""
import logging
import os
import weakref

import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, default_setup
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..config import add_aw_config
from ..evaluation import write_eval_results
from .checkpoint import AWCheckpointer

__all__ = ["Trainer", "create_ddp_model", "setup"]

logger = logging.getLogger("aw_detection")


def create_ddp_model(model, **kwargs):
    """Wrap in DDP when distributed. Unlike Detectron2's helper it passes ``device_ids`` only
    for CUDA modules: DDP rejects them for CPU modules (gloo training)."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation, eval_results.json, our checkpointer and a DDP
    wrapper that also works on CPU."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with the DDP wrapper and checkpointer above.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AWCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(f'SOLVER.OPTIMIZER must be "SGD" or "ADAMW", got "{cfg.SOLVER.OPTIMIZER}"')
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process():
            # DefaultTrainer.test unwraps the dict of a single dataset; keep the dataset key.
            by_dataset = {cfg.DATASETS.TEST[0]: results} if len(cfg.DATASETS.TEST) == 1 else results
            path = write_eval_results(by_dataset, cfg.OUTPUT_DIR)
            logger.info(f"Evaluation results written to {path}")
        return results


def load_config(config_file, opts=()):
    """get_cfg() + add_aw_config + file + KEY VALUE overrides (not frozen)."""
    cfg = get_cfg()
    add_aw_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args):
    """Config from the command line, frozen, with Detectron2's default_setup (logging, seed)."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        # Processes share the cores: more threads each only contend (measured 3x slower).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg
