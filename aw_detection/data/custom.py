"""COCO-format datasets named on the command line: ``--dataset NAME=ANNOTATIONS.json:IMAGE_DIR``."""
import json
import os
import tempfile

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from ..errors import UserError
from .validation import validate_coco

__all__ = ["parse_dataset_arg", "prepare_datasets"]


def parse_dataset_arg(spec):
    """"name=path/to/ann.json:path/to/images" -> (name, json_file, image_root)."""
    name, sep, paths = spec.partition("=")
    json_file, sep2, image_root = paths.rpartition(":")
    if not (sep and sep2 and name and json_file and image_root):
        raise UserError(f"--dataset {spec!r}: expected NAME=ANNOTATIONS.json:IMAGE_DIR")
    return name, json_file, image_root


def _write_fixed(summary, cache_dir):
    """The validated data (clipped/dropped boxes) as a JSON that training and COCO evaluation
    both read, so they see the same boxes."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{summary['name']}.json")
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(summary["data"], f)
    os.replace(tmp, path)  # atomic: several processes may do this at once
    return path


def prepare_datasets(specs, train_names, cache_dir):
    """Validate and register each ``NAME=JSON:DIR``; returns {name: DatasetSummary}."""
    summaries = {}
    for spec in specs:
        name, json_file, image_root = parse_dataset_arg(spec)
        if name in summaries or name in DatasetCatalog.list():
            raise UserError(f"--dataset {spec!r}: a dataset named {name!r} is already registered; "
                            "choose another name")
        summary = validate_coco(json_file, image_root, name, training=name in train_names)
        if summary["fixed"]:
            json_file = _write_fixed(summary, cache_dir)
        register_coco_instances(name, {}, json_file, image_root)
        summaries[name] = summary
    return summaries
