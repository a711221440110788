"""COCO-format datasets named on the command line: ``--dataset NAME=ANNOTATIONS.json:IMAGE_DIR``."""
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["parse_dataset_arg", "register_datasets"]


def parse_dataset_arg(spec):
    """"name=path/to/ann.json:path/to/images" -> (name, json_file, image_root)."""
    name, sep, paths = spec.partition("=")
    json_file, sep2, image_root = paths.rpartition(":")
    if not (sep and sep2 and name and json_file and image_root):
        raise ValueError(f"--dataset {spec!r}: expected NAME=ANNOTATIONS.json:IMAGE_DIR")
    return name, json_file, image_root


def register_datasets(specs):
    """Register each ``NAME=JSON:DIR`` as a COCO instances dataset; returns the names."""
    names = []
    for spec in specs:
        name, json_file, image_root = parse_dataset_arg(spec)
        if name in DatasetCatalog.list():
            raise ValueError(f"--dataset {spec!r}: a dataset named {name!r} is already registered")
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names
