"""From the command line to a frozen config (tools/train_net.py)."""
import os

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint.backbone_weights import apply_torchvision_settings
from ..config import load_config
from ..data import apply_dataset_classes, check_registered, num_classes, prepare_datasets
from ..errors import UserError

__all__ = ["setup", "check_weights"]


def check_weights(cfg, eval_only, resume):
    """MODEL.WEIGHTS present where the run needs it (detection and classification CLIs)."""
    weights = cfg.MODEL.WEIGHTS
    has_last = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if eval_only and not weights and not (resume and has_last):
        raise UserError("--eval-only needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth "
                        "(or --resume with an OUTPUT_DIR that holds a last_checkpoint)")
    if weights and "://" not in weights and not os.path.isfile(weights) and not (resume and has_last):
        raise UserError(f"MODEL.WEIGHTS {weights} does not exist")


def _prepare_detection_data(cfg, args):
    """Datasets validated and registered, classes taken from the training set."""
    cache = os.path.join(cfg.OUTPUT_DIR, "datasets")
    prepare_datasets(getattr(args, "dataset", []), cfg.DATASETS.TRAIN, cache, cfg.MODEL.MASK_ON)
    check_registered(cfg, training=not args.eval_only)
    apply_dataset_classes(cfg, training=not args.eval_only,
                          explicit_num_classes=num_classes(cfg)[0] in list(args.opts)[::2])


def setup(args, prepare_data=_prepare_detection_data):
    """Config from the command line, ``prepare_data(cfg, args)`` (detection: datasets
    validated and registered, classes taken from the training set), weights checked, frozen,
    with Detectron2's default_setup (output dir, logging, seed)."""
    cfg = load_config(args.config_file, args.opts)
    # Our messages (dataset checks, NUM_CLASSES) come before default_setup configures logging.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="aw_detection",
                 abbrev_name="aw")
    prepare_data(cfg, args)
    check_weights(cfg, args.eval_only, args.resume)
    apply_torchvision_settings(cfg, explicit_keys=list(args.opts)[::2])  # torchvision weights
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        # Processes share the cores: more threads each only contend (measured 3x slower).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg
