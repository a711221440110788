"""Config keys of aw_detection (this is the only place they are created) and loading a config
from the command line with clear errors."""
import difflib
import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import UserError

__all__ = ["add_aw_config", "load_config", "load_run_config"]

logger = logging.getLogger("aw_detection")


def add_aw_config(cfg):
    """Add the aw_detection keys to a Detectron2 config (in place) and return it."""
    _C = cfg

    # AW-convolution (Zhu et al., ICANN 2021): the 3x3 conv(s) of every residual block in
    # STAGES convolve with (1 + A[n]) * K, A[n] shaped like the kernel.
    _C.MODEL.AW = CN()
    _C.MODEL.AW.ENABLED = False
    # Detectron2 freezes stem and res2 by default (BACKBONE.FREEZE_AT=2), so res3-res5.
    _C.MODEL.AW.STAGES = ["res3", "res4", "res5"]
    # Generator hidden width: max(C_in // REDUCTION, 8).
    _C.MODEL.AW.REDUCTION = 16
    # Attention rows G. 0: one row per output channel (the literal weight-shaped map,
    # "AW-full"); G > 0: each row shared by C_out // G consecutive output channels ("AW-lite").
    _C.MODEL.AW.ATTENTION_GROUPS = 0
    # How the per-sample convolution runs: "cudnn" (the torch formulations: cuDNN on GPU,
    # oneDNN on CPU), "triton" (the fused Triton kernel on CUDA) or "auto" (the fused kernel on
    # CUDA only for layer shapes a GPU benchmark measured it faster on; layers/aw_conv.py
    # TRITON_FASTER). CPU, TorchScript and ONNX export always run the torch formulations.
    _C.MODEL.AW.KERNEL = "auto"

    # Activation attention on the residual branch output, before the sum (as SE/CBAM do).
    _C.MODEL.ACT_ATTENTION = CN()
    # "" (off), "SE" (Hu et al., CVPR 2018) or "CBAM" (Woo et al., ECCV 2018).
    _C.MODEL.ACT_ATTENTION.TYPE = ""
    _C.MODEL.ACT_ATTENTION.STAGES = ["res3", "res4", "res5"]
    # Channel-MLP reduction ratio (16 in both papers).
    _C.MODEL.ACT_ATTENTION.REDUCTION = 16

    # Attention-augmented convolution (Bello et al., ICCV 2019).
    _C.MODEL.AA = CN()
    _C.MODEL.AA.ENABLED = False
    # Attention memory grows with (H*W)^2, so only the coarsest stage by default.
    _C.MODEL.AA.STAGES = ["res5"]
    _C.MODEL.AA.HEADS = 8
    # Key and value channels as fractions of the conv's output channels (kappa, upsilon).
    _C.MODEL.AA.KAPPA = 0.2
    _C.MODEL.AA.NU = 0.1
    # Largest attention map side (after the stride-2 pooling) the relative tables cover; a
    # larger map is an error. 128 covers res4 and res5 of COCO inputs (longest side 1333).
    _C.MODEL.AA.MAX_SIZE = 128

    # "SGD" (Detectron2's optimizer) or "ADAMW". AdamW trains the small from-scratch demo
    # models much faster on CPU; COCO configs keep SGD as in the model zoo.
    _C.SOLVER.OPTIMIZER = "SGD"

    # The model's classes in the order of its outputs, and their category ids in the training
    # set's annotation file. tools/train_net.py fills them from the training set, so that a
    # run's config.yaml alone names its classes (demo, evaluation, export). Empty: taken from
    # the metadata of the config's datasets.
    _C.MODEL.CLASS_NAMES = []
    _C.MODEL.CATEGORY_IDS = []

    # --- Classification pre-training (tools/train_classification.py) and AW generator
    # optimisation (ablations). MODEL.META_ARCHITECTURE "ImageClassifier": the config's
    # backbone (MODEL.RESNETS, MODEL.AW/AA/ACT_ATTENTION) + global average pool + linear head.
    _C.MODEL.CLASSIFIER = CN()
    # Number of classes; tools/train_classification.py takes it from the class folders.
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    # Label smoothing of the cross-entropy (0.1: the usual ImageNet recipe).
    _C.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.1
    # An ImageFolder root with train/<class>/* and val/<class>/* (--data-dir). The name
    # "shapes_classification" is the embedded set (object crops of the shapes generator),
    # written under $DETECTRON2_DATASETS on first use.
    _C.DATASETS.IMAGE_FOLDER = ""
    _C.INPUT.CLASSIFICATION = CN()
    # Training: RandomResizedCrop to TRAIN_SIZE with area fraction in (MIN_SCALE, 1) + flip.
    _C.INPUT.CLASSIFICATION.TRAIN_SIZE = 224
    _C.INPUT.CLASSIFICATION.MIN_SCALE = 0.08
    # Evaluation: shorter side resized to TEST_RESIZE, centre crop of TEST_SIZE (256 / 224).
    _C.INPUT.CLASSIFICATION.TEST_RESIZE = 256
    _C.INPUT.CLASSIFICATION.TEST_SIZE = 224
    # Multipliers on SOLVER.BASE_LR and SOLVER.WEIGHT_DECAY for the AW attention generators.
    # 1.0 is the paper's formulation (one learning rate and decay for the whole network).
    _C.MODEL.AW.GENERATOR_LR_FACTOR = 1.0
    _C.MODEL.AW.GENERATOR_WEIGHT_DECAY_FACTOR = 1.0
    return cfg


def _all_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _config_error(cfg, source, error):
    message = str(error).strip("'\"")
    match = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if match:
        key = match.group(1)
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return UserError(f"{source}: unknown config key {key}.{hint}")
    return UserError(f"{source}: {message}")


def load_config(config_file, opts=()):
    """get_cfg() + add_aw_config + file + KEY VALUE overrides (not frozen), every mistake a
    UserError naming the file or key."""
    if not os.path.isfile(config_file):
        raise UserError(f"config file {config_file} does not exist")
    cfg = add_aw_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as e:
        raise _config_error(cfg, config_file, e)
    except FileNotFoundError as e:  # a missing _BASE_
        raise UserError(f"{config_file}: {e}")
    flags = [o for o in opts if str(o).startswith("--")]
    if flags:
        raise UserError(f"{flags[0]} comes after the KEY VALUE overrides, which take the rest of "
                        "the command line: put options first")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise _config_error(cfg, "command-line override", e)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available here: "
                       "running on CPU")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_run_config(run_dir, opts=()):
    """A trained run's ``config.yaml`` with MODEL.WEIGHTS set to its ``model_final.pth``
    (a MODEL.WEIGHTS in ``opts`` wins): all a run directory needs to describe its model."""
    config = os.path.join(run_dir, "config.yaml")
    weights = os.path.join(run_dir, "model_final.pth")
    if not os.path.isfile(config):
        raise UserError(f"--run {run_dir}: no config.yaml there; give a tools/train_net.py OUTPUT_DIR")
    if "MODEL.WEIGHTS" not in list(opts)[::2]:
        if not os.path.isfile(weights):
            raise UserError(f"--run {run_dir}: no model_final.pth there (is the run finished?); "
                            "name a checkpoint with MODEL.WEIGHTS")
        opts = ["MODEL.WEIGHTS", weights, *opts]
    return load_config(config, opts)
