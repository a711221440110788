"""The Detectron2 trainer and setup used by tools/train_net.py."""
import json
import logging
import os
import time
import weakref

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.engine.hooks import PeriodicWriter
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import AWCheckpointer
from .cli import DropDivergedTraceback
from ..data import RobustDatasetMapper
from ..errors import ConfigError
from ..evaluation import write_eval_results
from .hooks import AttentionStats
from .optimizer import scale_generator_params

__all__ = ["Trainer", "InferenceTimer", "CPUAutocastTrainer"]

logger = logging.getLogger("aw_detection")


class CPUAutocastTrainer(SimpleTrainer):
    """SOLVER.AMP.ENABLED without CUDA: Detectron2's AMPTrainer is CUDA-only (fp16 with a grad
    scaler); on CPU the forward runs under bfloat16 autocast, whose float32 exponent range needs
    no grad scaler. AWConv2d keeps its attention in float32 either way."""

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation, eval_results.json, our checkpointer and a DDP
    wrapper that also works on CPU."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with our checkpointer and a DDP wrapper that also works on
        # CPU: Detectron2's default device_ids=[rank] is rejected by DDP for CPU modules.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        logging.getLogger("detectron2.engine.train_loop").addFilter(DropDivergedTraceback())
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cuda = next(model.parameters()).device.type == "cuda"
        model = create_ddp_model(model, broadcast_buffers=False,
                                 device_ids=[comm.get_local_rank()] if on_cuda else None)
        if cfg.SOLVER.AMP.ENABLED and not on_cuda:
            logger.info("SOLVER.AMP.ENABLED on CPU: bfloat16 autocast (Detectron2's AMPTrainer "
                        "needs CUDA)")
        trainer_class = (SimpleTrainer if not cfg.SOLVER.AMP.ENABLED
                         else AMPTrainer if on_cuda else CPUAutocastTrainer)
        self._trainer = trainer_class(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AWCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hooks = super().build_hooks()
        # Before the writer, so that the scalars go out in the same iteration's record.
        writers = [i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)]
        hooks.insert(writers[0] if writers else len(hooks), AttentionStats(self.model))
        return hooks

    def resume_or_load(self, resume=True):
        # Continuing a run restores it exactly: there, weights that do not fit are an error.
        self.checkpointer.strict = resume and self.checkpointer.has_checkpoint()
        super().resume_or_load(resume)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=RobustDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=RobustDatasetMapper(cfg, False))

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return scale_generator_params(super().build_optimizer(cfg, model), model, cfg)
        if name != "ADAMW":
            raise ConfigError(f'SOLVER.OPTIMIZER must be "SGD" or "ADAMW", got "{cfg.SOLVER.OPTIMIZER}"')
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        return scale_generator_params(optimizer, model, cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # One folder per test set: COCOEvaluator's files would overwrite each other.
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        with InferenceTimer(model) as timer:
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process():
            # DefaultTrainer.test unwraps the dict of a single dataset; keep the dataset key.
            by_dataset = {cfg.DATASETS.TEST[0]: results} if len(cfg.DATASETS.TEST) == 1 else results
            path = write_eval_results(by_dataset, cfg.OUTPUT_DIR)
            with open(os.path.join(cfg.OUTPUT_DIR, "run_stats.json"), "w") as f:
                json.dump({"inference_s_per_img": timer.seconds_per_image()}, f)
            logger.info(f"Evaluation results written to {path}")
        return results


def synchronize(device=None):
    """Wait for the GPU's queued work (timings would stop the clock before it runs)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


class InferenceTimer:
    """Times the model's forward calls (model only: no data loading, no evaluation),
    skipping the first ``warmup`` calls as Detectron2's inference_on_dataset does."""

    def __init__(self, model, warmup=5):
        self.model, self.warmup = model, warmup
        self.calls, self.images, self.seconds, self._start = 0, 0, 0.0, None

    def _pre(self, module, inputs):
        synchronize()
        self._start = time.perf_counter()

    def _post(self, module, inputs, output):
        synchronize()
        self.calls += 1
        if self.calls > self.warmup:
            self.seconds += time.perf_counter() - self._start
            self.images += len(inputs[0])

    def seconds_per_image(self):
        return self.seconds / self.images if self.images else None

    def __enter__(self):
        self._handles = [self.model.register_forward_pre_hook(self._pre),
                         self.model.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
