"""From the command line to a frozen config: clear errors for every user mistake."""
import difflib
import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_aw_config
from ..data import prepare_datasets
from ..errors import UserError

__all__ = ["load_config", "setup"]

logger = logging.getLogger("aw_detection")
NUM_CLASSES_KEY = "MODEL.ROI_HEADS.NUM_CLASSES"


def _all_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, CfgNode):
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
    """get_cfg() + add_aw_config + file + KEY VALUE overrides (not frozen)."""
    if not os.path.isfile(config_file):
        raise UserError(f"config file {config_file} does not exist")
    cfg = add_aw_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as e:
        raise _config_error(cfg, config_file, e)
    except FileNotFoundError as e:  # a missing _BASE_
        raise UserError(f"{config_file}: {e}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise _config_error(cfg, "command-line override", e)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _set_num_classes(cfg, summaries, explicit):
    """NUM_CLASSES from the --dataset training set's categories. A value given on the command
    line is the user's and must agree; a config file's value (written for its own dataset) is
    replaced."""
    train = [summaries[n] for n in cfg.DATASETS.TRAIN if n in summaries]
    if not train:
        return
    classes = train[0]["categories"]
    for other in train[1:]:
        if other["categories"] != classes:
            raise UserError(f"training sets {train[0]['name']} and {other['name']} have different "
                            f"categories ({classes} vs {other['categories']})")
    if explicit and cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(classes):
        raise UserError(f"{NUM_CLASSES_KEY}={cfg.MODEL.ROI_HEADS.NUM_CLASSES} but training set "
                        f"{train[0]['name']} has {len(classes)} categories {classes}; drop the "
                        f"override (it is taken from the data) or make them agree")
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(classes):
        logger.info(f"{NUM_CLASSES_KEY}: {cfg.MODEL.ROI_HEADS.NUM_CLASSES} -> {len(classes)} "
                    f"(the categories of {train[0]['name']})")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)


def _check_datasets(cfg):
    known = DatasetCatalog.list()
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in known:
                raise UserError(f"DATASETS.{key} names {name!r}, which is not registered. Register "
                                f"your own with --dataset {name}=ANNOTATIONS.json:IMAGE_DIR "
                                f"(built-in: shapes_train, shapes_val, coco_2017_train, ...)")


def _check_weights(cfg, eval_only, resume):
    weights = cfg.MODEL.WEIGHTS
    has_last = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if eval_only and not weights and not (resume and has_last):
        raise UserError("--eval-only needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth "
                        "(or --resume with an OUTPUT_DIR that holds a last_checkpoint)")
    if weights and "://" not in weights and not os.path.isfile(weights) and not (resume and has_last):
        raise UserError(f"MODEL.WEIGHTS {weights} does not exist")


def setup(args):
    """Config from the command line (tools/train_net.py), datasets validated and registered,
    frozen, with Detectron2's default_setup (output dir, logging, seed)."""
    cfg = load_config(args.config_file, args.opts)
    # Our messages (dataset checks, NUM_CLASSES) come before default_setup configures logging.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="aw_detection",
                 abbrev_name="aw")
    cache = os.path.join(cfg.OUTPUT_DIR, "datasets")
    summaries = prepare_datasets(getattr(args, "dataset", []), cfg.DATASETS.TRAIN, cache)
    _set_num_classes(cfg, summaries, explicit=NUM_CLASSES_KEY in list(args.opts)[::2])
    _check_datasets(cfg)
    _check_weights(cfg, args.eval_only, args.resume)
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        # Processes share the cores: more threads each only contend (measured 3x slower).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg
