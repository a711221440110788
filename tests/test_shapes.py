import json
import os

import numpy as np
from PIL import Image

from aw_detection.data import SHAPES_CLASSES, generate_shapes


def _read(root, split):
    data = json.load(open(os.path.join(root, f"{split}.json")))
    pixels = [np.asarray(Image.open(os.path.join(root, split, im["file_name"])))
              for im in data["images"]]
    return data, pixels


def test_generator_is_deterministic(tmp_path):
    for name in ("a", "b"):
        generate_shapes(str(tmp_path / name), "train", 6, seed=5)
    generate_shapes(str(tmp_path / "c"), "train", 6, seed=6)
    (data_a, pix_a), (data_b, pix_b), (data_c, pix_c) = (
        _read(str(tmp_path / n), "train") for n in "abc")
    assert data_a == data_b
    assert all((x == y).all() for x, y in zip(pix_a, pix_b))
    assert data_a != data_c


def test_annotations_are_valid_coco(tmp_path):
    data, pixels = _read(os.path.dirname(generate_shapes(str(tmp_path), "val", 40, seed=2)), "val")
    assert [c["name"] for c in data["categories"]] == SHAPES_CLASSES
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for im, pix in zip(data["images"], pixels):
        assert pix.shape == (im["height"], im["width"], 3)
    per_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        height, width = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert 0 < ann["area"] <= w * h
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    counts = [per_image.get(i, 0) for i in sizes]
    assert min(counts) == 0, "some images have no objects"
    assert max(counts) >= 6, "some images are crowded (7-10 shapes drawn, a few hidden)"
    assert len({a["category_id"] for a in data["annotations"]}) == len(SHAPES_CLASSES)
