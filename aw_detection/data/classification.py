"""Image-classification data: a torchvision ImageFolder root (``train/<class>/*``,
``val/<class>/*``) checked up front, read like the detection data, with the standard ImageNet
augmentation, in Detectron2's samplers and batch loader.

Refused with one message each: a missing root or split folder, no class folders, class folders
without images, train and val with different classes, files that are not readable images
(header check). An image whose data turns out to be corrupt later is skipped with a warning in
training (the next one is taken) and is an error in evaluation, as for detection.
"""
import logging
import os
import time

import torch
from detectron2.data.build import build_batch_data_loader, worker_init_reset_seed
from detectron2.data.samplers import InferenceSampler, TrainingSampler
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from aw_detection.data import read_image
from aw_detection.errors import UserError, few
from aw_detection.data.shapes_classification import SHAPES_CLASSIFICATION, ensure_shapes_classification

__all__ = ["resolve_image_folder", "check_image_folder", "ClassificationFolder",
           "build_classification_train_loader", "build_classification_test_loader"]

logger = logging.getLogger("aw_detection")

SPLITS = ("train", "val")
READ_ERRORS = (OSError, ValueError, SyntaxError)


def resolve_image_folder(name):
    """DATASETS.IMAGE_FOLDER -> a directory (the embedded set is generated on first use)."""
    if not name:
        raise UserError("no image folder: give --data-dir D, an ImageFolder root with "
                        "D/train/<class>/* and D/val/<class>/* (or DATASETS.IMAGE_FOLDER)")
    if name == SHAPES_CLASSIFICATION and not os.path.isdir(name):
        return ensure_shapes_classification()
    return name


def _classes(split_dir):
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _check_headers(paths):
    unreadable = []
    for path in paths:
        try:
            with Image.open(path):
                pass
        except READ_ERRORS as e:
            unreadable.append(f"{path} ({e})")
    if unreadable:
        raise UserError(f"{len(unreadable)} file(s) cannot be read as images: {few(unreadable, 3)}; "
                        "replace or remove them")


def check_image_folder(root, check_headers=True):
    """The class names (sorted, as ImageFolder indexes them) of a valid ImageFolder root;
    UserError naming the folder/file and what to do otherwise. ``check_headers``: open every
    file's header (the slow part; one process per machine does it)."""
    if not os.path.isdir(root):
        raise UserError(f"image folder {root} does not exist (--data-dir / DATASETS.IMAGE_FOLDER)")
    classes = {}
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise UserError(f"{root} has no {split}/ folder: an ImageFolder root holds "
                            f"train/<class>/ and val/<class>/ folders of images")
        classes[split] = _classes(split_dir)
        if not classes[split]:
            raise UserError(f"{split_dir} has no class folders; put each class's images in "
                            f"{split_dir}/<class name>/")
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise UserError(f"{root}: train/ and val/ have different classes (only in train: "
                        f"{few(only_train) or '-'}; only in val: {few(only_val) or '-'}); "
                        "both need the same class folders")
    index = {name: i for i, name in enumerate(classes["train"])}
    start, paths = time.perf_counter(), []
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        samples = make_dataset(split_dir, index, IMG_EXTENSIONS, allow_empty=True)
        found = {label for _, label in samples}
        empty = [name for name, i in index.items() if i not in found]
        if empty:
            raise UserError(f"{split_dir}: class folder(s) without images: {few(empty)} "
                            f"(image files end with {', '.join(IMG_EXTENSIONS)}); add images or "
                            "remove the folder from train/ and val/")
        paths += [path for path, _ in samples]
    if check_headers:
        _check_headers(paths)
        logger.info(f"image folder {root}: {len(index)} classes, {len(paths)} images "
                    f"(headers checked in {time.perf_counter() - start:.1f} s)")
    return classes["train"]


def _transform(cfg, training):
    c = cfg.INPUT.CLASSIFICATION
    if training:
        steps = [T.RandomResizedCrop(c.TRAIN_SIZE, scale=(c.MIN_SCALE, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(c.TEST_RESIZE), T.CenterCrop(c.TEST_SIZE)]
    return T.Compose(steps + [T.PILToTensor()])


class ClassificationFolder(ImageFolder):
    """torchvision's ImageFolder yielding {"image": (3, H, W) uint8 in ``image_format``,
    "label": int, "error": ""}. Images are read with :func:`aw_detection.data.read_image`
    (EXIF orientation, grayscale/palette/RGBA/16-bit). An undecodable image is skipped with a
    warning in training; in evaluation its "error" names it and the evaluator stops, in the
    main process (an exception in a loader worker would arrive wrapped in its traceback)."""

    def __init__(self, root, transform, image_format="BGR", training=True):
        super().__init__(root, transform=transform)
        self.image_format, self.training = image_format, training

    def _read(self, path):
        return Image.fromarray(read_image(path, "RGB"))

    def __getitem__(self, index):
        for attempt in range(len(self)):
            path, label = self.samples[(index + attempt) % len(self)]
            try:
                image = self.transform(self._read(path))
            except READ_ERRORS as e:
                if not self.training:
                    blank = torch.zeros(3, 1, 1, dtype=torch.uint8)
                    return {"image": blank, "label": label,
                            "error": f"image {path} cannot be decoded ({e}); replace or remove it"}
                logger.warning(f"Skipping image {path}: it cannot be decoded ({e})")
                continue
            if self.image_format == "BGR":
                image = image.flip(0)
            return {"image": image, "label": label, "error": ""}
        raise UserError(f"{self.root}: no image can be decoded")


def _collate(batch):
    errors = [item["error"] for item in batch if item["error"]]
    if errors:  # evaluation only; shapes may differ, so no stacking
        return {"error": errors}
    return default_collate(batch)


def _folder(cfg, split, training):
    root = resolve_image_folder(cfg.DATASETS.IMAGE_FOLDER)
    return ClassificationFolder(os.path.join(root, split), _transform(cfg, training),
                                cfg.INPUT.FORMAT, training)


def build_classification_train_loader(cfg):
    """Infinite, shuffled (Detectron2's TrainingSampler: seeded, sharded over processes)
    batches of SOLVER.IMS_PER_BATCH images in total."""
    dataset = _folder(cfg, "train", training=True)
    return build_batch_data_loader(dataset, TrainingSampler(len(dataset)), cfg.SOLVER.IMS_PER_BATCH,
                                   num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_collate)


def build_classification_test_loader(cfg):
    """The val split, sharded over processes (InferenceSampler), IMS_PER_BATCH / world size
    images per batch."""
    dataset = _folder(cfg, "val", training=False)
    batch = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
    return DataLoader(dataset, batch_size=batch, sampler=InferenceSampler(len(dataset)),
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_collate,
                      worker_init_fn=worker_init_reset_seed)
