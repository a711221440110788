"""LazyConfig (``.py``) configs from the command line, with clear errors.

Detectron2's ``LazyConfig.load`` and ``apply_overrides`` do the work. Overrides are checked
first: ``apply_overrides`` would add a misspelt key (``train.max_iters=10``) that nothing reads,
and the run would silently use the old value. A key is accepted when the config has it, or when
it names an argument of the callable that its ``LazyCall`` node builds.
"""
import difflib
import inspect
import logging
import os

import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from omegaconf import DictConfig, ListConfig

from .data import dataset_classes
from .errors import UserError

__all__ = ["check_lazy_datasets", "lazy_dataset_names", "lazy_num_classes", "load_lazy_config"]

logger = logging.getLogger("aw_detection")


def _accepts(target, name):
    """Whether the callable ``target`` (or its import path) takes a keyword ``name``."""
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        target = locate(target)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True  # cannot tell (a builtin): let the call decide
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _check_override_key(cfg, key):
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif (i == len(parts) - 1 and isinstance(node, DictConfig) and "_target_" in node
              and _accepts(node._target_, part)):
            return
        else:
            keys = list(node.keys()) if isinstance(node, DictConfig) else []
            close = difflib.get_close_matches(part, [str(k) for k in keys], n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise UserError(f"override {key}: {where} has no {part!r}.{hint}")


def load_lazy_config(config_file, overrides=()):
    """``LazyConfig.load`` + checked ``key=value`` overrides; a CUDA device on a machine
    without CUDA becomes the CPU (as :func:`aw_detection.config.load_config` does)."""
    if not os.path.isfile(config_file):
        raise UserError(f"config file {config_file} does not exist")
    try:
        cfg = LazyConfig.load(config_file)
    except (ImportError, SyntaxError, NameError, AttributeError, KeyError, ValueError) as e:
        raise UserError(f"{config_file} cannot be loaded: {type(e).__name__}: {e}") from e
    if "_target_" not in cfg.get("model", {}):
        raise UserError(f"{config_file} is not a LazyConfig (a .py config, or the config.yaml a "
                        "lazy run saved): it has no model to instantiate. YAML configs of "
                        "configs/ go to tools/train_net.py")
    for override in overrides:
        if "=" not in override:
            raise UserError(f"override {override!r}: write KEY=VALUE, e.g. train.max_iter=100")
        key = override.split("=", 1)[0].lstrip("+")
        if key != "variant":  # not a config key: chooses from the file's variants
            _check_override_key(cfg, key)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    _apply_variant(cfg, config_file)
    train = cfg.get("train")
    if train is not None and str(train.get("device", "cpu")).startswith("cuda") \
            and not torch.cuda.is_available():
        logger.warning(f"train.device is {train.device!r} but CUDA is not available here: "
                       "running on CPU")
        train.device = "cpu"
    return cfg


def _apply_variant(cfg, config_file):
    """``variant=NAME``: the settings ``variants[NAME]`` merged into the backbone's attention
    (configs/common/variants.py); merging again (a saved config.yaml) changes nothing."""
    name = cfg.get("variant")
    if not name:
        return
    variants = cfg.get("variants") or {}
    if name not in variants:
        raise UserError(f"variant={name}: {config_file} has the variants {sorted(variants)}")
    bottom_up = cfg.model.backbone.bottom_up
    for section, settings in variants[name].items():
        for key, value in settings.items():
            bottom_up[section][key] = value


def lazy_dataset_names(loader):
    """The dataset names of a ``dataloader.train`` / ``.test`` node (a name or a list)."""
    names = loader.dataset.names
    return [names] if isinstance(names, str) else list(names)


def lazy_num_classes(model):
    """(key, number of classes) of a lazy R-CNN or dense detector (RetinaNet, FCOS) model
    node; (None, None) for other models."""
    if "num_classes" in model.get("roi_heads", {}):
        return "model.roi_heads.num_classes", model.roi_heads.num_classes
    if "num_classes" in model:
        return "model.num_classes", model.num_classes
    return None, None


def check_lazy_datasets(cfg, training=True):
    """The run's datasets are registered, and the model predicts as many classes as they have."""
    key, num = lazy_num_classes(cfg.model)
    splits = ("train", "test") if training else ("test",)
    for split in splits:
        for name in lazy_dataset_names(cfg.dataloader[split]):
            if name not in DatasetCatalog.list():
                raise UserError(
                    f"dataloader.{split}.dataset.names has {name!r}, which is not registered. "
                    f"Register your own with --dataset {name}=ANNOTATIONS.json:IMAGE_DIR "
                    "(built-in: shapes_train, shapes_val, coco_2017_train, ...)")
    for name in lazy_dataset_names(cfg.dataloader[splits[0]]) if key else ():
        classes = dataset_classes(name)
        if classes is not None and len(classes[0]) != num:
            raise UserError(f"{key}={num} but dataset {name} has {len(classes[0])} "
                            f"categories; add the override {key}={len(classes[0])}")
