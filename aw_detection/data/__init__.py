"""Datasets: the embedded synthetic shapes data, registered as shapes_train / shapes_val."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .custom import (
    apply_dataset_classes,
    check_registered,
    dataset_classes,
    num_classes,
    parse_dataset_arg,
    prepare_datasets,
)
from .mapper import RobustDatasetMapper, image_size, inference_resize, read_image
from .shapes import SHAPES_CLASSES, SPLITS, ensure_shapes, generate_shapes, shapes_root


def _load_shapes(split):
    root = ensure_shapes()
    return load_coco_json(os.path.join(root, f"{split}.json"), os.path.join(root, split),
                          f"shapes_{split}")


TRAIN_EVAL_IMAGES = 100


def _load_shapes_train_eval():
    return _load_shapes("train")[:TRAIN_EVAL_IMAGES]


def register_shapes():
    """Register shapes_<split> for every split (generated on first use), and shapes_train_eval:
    the first 100 training images, to measure how well a model fits its training data."""
    root = shapes_root()
    for split in SPLITS:
        name = f"shapes_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda split=split: _load_shapes(split))
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPES_CLASSES), evaluator_type="coco",
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
            json_file=os.path.join(root, f"{split}.json"), image_root=os.path.join(root, split),
        )
    if "shapes_train_eval" not in DatasetCatalog.list():
        # No json_file: COCOEvaluator writes the ground truth of these images itself.
        DatasetCatalog.register("shapes_train_eval", _load_shapes_train_eval)
        MetadataCatalog.get("shapes_train_eval").set(
            thing_classes=list(SHAPES_CLASSES), evaluator_type="coco",
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))})


register_shapes()
