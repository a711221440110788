"""The embedded classification set: object crops of the shapes generator
(:mod:`aw_detection.data.shapes`), one class folder per shape kind, as an ImageFolder
(``train/<class>/*.png``, ``val/<class>/*.png``).

Scenes are drawn exactly as for detection (backgrounds, clutter, occlusion) but from other
seeds than the detection splits, and every annotated shape is cropped as a square with some
context around its visible box. Each class gets the same number of crops. Every file depends
only on (seed, split, index).
"""
import os

import numpy as np
from PIL import Image

from aw_detection.data.shapes import SHAPES_CLASSES, draw_image, ensure_generated

__all__ = ["SHAPES_CLASSIFICATION", "shapes_classification_root", "generate_shapes_classification",
           "ensure_shapes_classification"]

# The DATASETS.IMAGE_FOLDER value that names this set.
SHAPES_CLASSIFICATION = "shapes_classification"
# split -> (crops per class, seed). Seeds differ from the detection splits' (1, 2). Bump
# VERSION when anything here changes: it names the cache.
SPLITS = {"train": (500, 101), "val": (100, 102)}
VERSION = 1
CROP_SIZE = 64  # stored crop side in pixels
CONTEXT = 1.25  # crop side / the longer side of the visible box


def shapes_classification_root():
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"),
                        f"{SHAPES_CLASSIFICATION}_v{VERSION}")


def _square_crop(img, bbox):
    """A CONTEXT-times larger square around the box, shifted to lie inside the image where
    it fits, resized to CROP_SIZE."""
    x, y, w, h = bbox
    side = min(max(w, h) * CONTEXT, max(img.size))
    cx, cy = x + w / 2, y + h / 2
    x0 = min(max(cx - side / 2, 0), max(img.width - side, 0))
    y0 = min(max(cy - side / 2, 0), max(img.height - side, 0))
    crop = img.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))
    return crop.resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR)


def generate_shapes_classification(out_dir, split, per_class, seed):
    """Write ``out_dir/<split>/<class>/NNNNN.png``, ``per_class`` crops per class."""
    for name in SHAPES_CLASSES:
        os.makedirs(os.path.join(out_dir, split, name), exist_ok=True)
    counts = [0] * len(SHAPES_CLASSES)
    scene = 0
    while min(counts) < per_class:
        rng = np.random.default_rng([seed, scene])
        scene += 1
        h, w = int(rng.integers(224, 289)), int(rng.integers(224, 321))
        img, annotations = draw_image(rng, h, w)
        for ann in annotations:
            category = ann["category_id"] - 1
            if counts[category] >= per_class:
                continue
            path = os.path.join(out_dir, split, SHAPES_CLASSES[category], f"{counts[category]:05d}.png")
            _square_crop(img, ann["bbox"]).save(path)
            counts[category] += 1
    return os.path.join(out_dir, split)


def ensure_shapes_classification(root=None):
    """Generate every split under ``root`` unless already there; safe with several processes."""
    def write(folder):
        for split, (per_class, seed) in SPLITS.items():
            generate_shapes_classification(folder, split, per_class, seed)
    return ensure_generated(root or shapes_classification_root(), write)
