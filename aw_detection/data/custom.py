"""COCO-format datasets named on the command line (``--dataset NAME=ANNOTATIONS.json:IMAGE_DIR``)
and the classes a model is trained and evaluated on."""
import json
import logging
import os
import tempfile

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..errors import UserError
from .validation import validate_coco

__all__ = ["parse_dataset_arg", "prepare_datasets", "check_registered", "dataset_classes",
           "num_classes", "apply_dataset_classes"]

logger = logging.getLogger("aw_detection")


def parse_dataset_arg(spec):
    """"name=path/to/ann.json:path/to/images" -> (name, json_file, image_root)."""
    name, sep, paths = spec.partition("=")
    json_file, sep2, image_root = paths.rpartition(":")
    if not (sep and sep2 and name and json_file and image_root):
        raise UserError(f"--dataset {spec!r}: expected NAME=ANNOTATIONS.json:IMAGE_DIR")
    return name, json_file, image_root


def _write_fixed(summary, cache_dir):
    """The validated data (filled fields, clipped/dropped boxes) as a JSON that training and
    COCO evaluation both read, so they see the same annotations."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{summary['name']}.json")
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(summary["data"], f)
    os.replace(tmp, path)  # atomic: several processes may do this at once
    return path


def prepare_datasets(specs, train_names, cache_dir, need_masks=False):
    """Validate and register each ``NAME=JSON:DIR`` with its class metadata (as Detectron2's
    loader would set it, but at once); returns {name: DatasetSummary}."""
    summaries = {}
    for spec in specs:
        name, json_file, image_root = parse_dataset_arg(spec)
        if name in summaries or name in DatasetCatalog.list():
            raise UserError(f"--dataset {spec!r}: a dataset named {name!r} is already registered; "
                            "choose another name")
        summary = validate_coco(json_file, image_root, name, training=name in train_names,
                                need_masks=need_masks)
        if summary["fixed"]:
            json_file = _write_fixed(summary, cache_dir)
        register_coco_instances(name, {
            "thing_classes": summary["categories"],
            "thing_dataset_id_to_contiguous_id": {i: k for k, i in enumerate(summary["category_ids"])},
        }, json_file, image_root)
        summaries[name] = summary
    return summaries


def check_registered(cfg, training=True):
    """Every dataset the run needs is registered (evaluation needs no training sets)."""
    known = DatasetCatalog.list()
    for key in ("TRAIN", "TEST") if training else ("TEST",):
        for name in cfg.DATASETS[key]:
            if name not in known:
                raise UserError(f"DATASETS.{key} names {name!r}, which is not registered. Register "
                                f"your own with --dataset {name}=ANNOTATIONS.json:IMAGE_DIR "
                                f"(built-in: shapes_train, shapes_val, coco_2017_train, ...)")


def dataset_classes(name):
    """(class names, category ids) of a registered dataset in contiguous-id order, or None
    for a dataset without class metadata."""
    meta = MetadataCatalog.get(name)
    if "thing_classes" not in meta.as_dict():
        DatasetCatalog.get(name)  # Detectron2's COCO loader sets the metadata as it loads
    if "thing_classes" not in meta.as_dict():
        return None
    names = list(meta.thing_classes)
    id_map = meta.get("thing_dataset_id_to_contiguous_id")
    ids = sorted(id_map, key=id_map.get) if id_map else list(range(1, len(names) + 1))
    return names, ids


def _describe(names, ids):
    pairs = [f"{i}:{n}" for n, i in zip(names, ids)]
    return "[" + ", ".join(pairs[:12]) + (", ..." if len(pairs) > 12 else "") + "]"


def num_classes(cfg):
    """(config key, value) of the number of classes the config's detector predicts."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _model_classes(cfg, training):
    """(where from, names, ids) of the classes the model predicts, or None if unknown: the
    training sets' when training, else the trained run's MODEL.CLASS_NAMES (or, for configs
    without them, the registered training sets')."""
    configured = list(cfg.MODEL.CLASS_NAMES)
    if configured and not training:  # the training sets need not even be registered
        ids = list(cfg.MODEL.CATEGORY_IDS) or list(range(1, len(configured) + 1))
        return "MODEL.CLASS_NAMES (the trained run's config)", configured, ids
    known = DatasetCatalog.list()
    train = [(f"training set {name}", dataset_classes(name))
             for name in cfg.DATASETS.TRAIN if name in known]
    train = [(label, *classes) for label, classes in train if classes is not None]
    for label, names, ids in train[1:]:
        if names != train[0][1]:
            raise UserError(f"{train[0][0]} and {label} have different categories: "
                            f"{_describe(*train[0][1:])} vs {_describe(names, ids)}")
    if train:
        if configured and configured != train[0][1]:
            logger.info(f"MODEL.CLASS_NAMES: the config's {len(configured)} classes -> the "
                        f"{len(train[0][1])} of {train[0][0]}")
        return train[0]
    return None


def apply_dataset_classes(cfg, training=True, explicit_num_classes=False):
    """Make the config name the classes its model predicts, and check every dataset against them.

    Training: the training sets must agree; their classes become MODEL.CLASS_NAMES /
    CATEGORY_IDS and NUM_CLASSES (a command-line NUM_CLASSES must agree; a config file's value,
    written for its own dataset, is replaced). Evaluation: the classes are the trained run's
    MODEL.CLASS_NAMES. Every test set must have the same classes in the same
    order, else its AP would be computed against the wrong classes."""
    key, num = num_classes(cfg)
    model = _model_classes(cfg, training)
    if model is not None:
        source, names, ids = model
        if explicit_num_classes and num != len(names):
            raise UserError(f"{key}={num} but {source} has {len(names)} categories "
                            f"{_describe(names, ids)}; drop the override (it is taken from the "
                            "data) or make them agree")
        if num != len(names):
            logger.info(f"{key}: {num} -> {len(names)} (the categories of {source})")
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES = num = len(names)
        cfg.MODEL.CLASS_NAMES, cfg.MODEL.CATEGORY_IDS = list(names), list(ids)
    for name in cfg.DATASETS.TEST:
        classes = dataset_classes(name)
        if classes is None:
            continue
        names, ids = classes
        if model is None:
            if len(names) != num:
                raise UserError(f"test set {name} has {len(names)} categories but the model has "
                                f"{key}={num}")
        elif names != model[1]:
            raise UserError(
                f"test set {name} has categories {_describe(names, ids)}, but the model predicts "
                f"those of {model[0]}: {_describe(model[1], model[2])}. Its AP would be computed "
                "against the wrong classes: evaluate on a set with the same categories (same "
                "names, in the same id order)")
