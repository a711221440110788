"""Validation of a COCO-format instances dataset before training.

Errors (one message naming the file, the id/field and what to do): unreadable or malformed
JSON, missing top-level keys or fields, duplicate ids, annotations pointing to unknown images or
categories, missing or unreadable image files, a training set without annotations.

Boxes are fixed, consistently for training and evaluation, with one warning each kind:
a box sticking out of its image is clipped to it (as Detectron2's mapper would); a box with
non-positive width/height, or none of it inside the image, is dropped.
"""
import json
import logging
import os
from PIL import Image

from ..errors import UserError

__all__ = ["validate_coco", "DatasetSummary"]

logger = logging.getLogger("aw_detection")


class DatasetSummary(dict):
    """name, json_file, image_root, images, boxes, categories (list of names), data (fixed
    dict), fixed (number of clipped + dropped boxes)."""

    def line(self):
        return (f"dataset {self['name']}: {self['images']} images, {self['boxes']} boxes, "
                f"{len(self['categories'])} classes ({self['json_file']})")


def _ids(items, where):
    seen, dups = set(), []
    for item in items:
        if item["id"] in seen:
            dups.append(item["id"])
        seen.add(item["id"])
    if dups:
        raise UserError(f"{where}: duplicate ids {sorted(set(dups))[:5]}; ids must be unique")
    return seen


def _require(items, fields, where):
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}[{i}] is not an object")
        missing = [f for f in fields if f not in item]
        if missing:
            raise UserError(f"{where}[{i}] (id={item.get('id')}) lacks field(s) {missing}")


def _few(ids):
    return ", ".join(str(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")


def validate_coco(json_file, image_root, name, training=False):
    """Check a COCO instances file (and its images); returns a DatasetSummary with the
    (possibly fixed) data. Raises UserError on anything that cannot be fixed safely."""
    if not os.path.isfile(json_file):
        raise UserError(f"{name}: annotation file {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise UserError(f"{name}: image folder {image_root} does not exist")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{json_file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{json_file}: cannot be read ({e})")
    if not isinstance(data, dict):
        raise UserError(f"{json_file}: top level must be an object with images, annotations, categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise UserError(f"{json_file}: missing or non-list top-level key(s) {missing}; a COCO "
                        "instances file has 'images', 'annotations' and 'categories' lists")
    where = lambda key: f"{json_file}: {key}"  # noqa: E731
    _require(data["images"], ("id", "file_name", "height", "width"), where("images"))
    _require(data["categories"], ("id", "name"), where("categories"))
    _require(data["annotations"], ("id", "image_id", "category_id", "bbox"), where("annotations"))
    image_ids = _ids(data["images"], where("images"))
    category_ids = _ids(data["categories"], where("categories"))
    _ids(data["annotations"], where("annotations"))

    images = {im["id"]: im for im in data["images"]}
    kept, clipped, dropped = [], [], []
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise UserError(f"{json_file}: annotation id={ann['id']} refers to image_id="
                            f"{ann['image_id']}, which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise UserError(f"{json_file}: annotation id={ann['id']} has category_id="
                            f"{ann['category_id']}, which is not in 'categories' "
                            f"(known: {sorted(category_ids)[:20]})")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"{json_file}: annotation id={ann['id']} bbox must be [x, y, width, "
                            f"height] numbers, got {bbox!r}")
        x, y, w, h = bbox
        im = images[ann["image_id"]]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, im["width"]), min(y + h, im["height"])
        if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
            dropped.append(ann["id"])
            continue
        if [x0, y0, x1 - x0, y1 - y0] != bbox:
            clipped.append(ann["id"])
            ann = dict(ann, bbox=[x0, y0, x1 - x0, y1 - y0])
        kept.append(ann)
    if clipped:
        logger.warning(f"{json_file}: {len(clipped)} boxes stick out of their image and were "
                       f"clipped to it (annotation ids {_few(clipped)})")
    if dropped:
        logger.warning(f"{json_file}: {len(dropped)} boxes have non-positive width/height or "
                       f"lie outside their image and were dropped (annotation ids {_few(dropped)})")
    if training and not kept:
        raise UserError(f"{json_file}: training set {name} has no (valid) annotations; "
                        "there is nothing to learn from")

    missing, unreadable = [], []
    for im in data["images"]:
        path = os.path.join(image_root, im["file_name"])
        if not os.path.isfile(path):
            missing.append(im["file_name"])
            continue
        try:
            with Image.open(path) as img:
                img.size  # header only: fast even for large datasets
        except Exception:
            unreadable.append(im["file_name"])
    if missing:
        raise UserError(f"{name}: {len(missing)} image file(s) listed in {json_file} are not "
                        f"in {image_root}: {_few(missing)}; fix file_name or the image folder")
    if unreadable:
        raise UserError(f"{name}: {len(unreadable)} image file(s) in {image_root} cannot be "
                        f"read as images: {_few(unreadable)}; replace or remove them")

    data = dict(data, annotations=kept)
    categories = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    summary = DatasetSummary(name=name, json_file=json_file, image_root=image_root,
                             images=len(data["images"]), boxes=len(kept), categories=categories,
                             data=data, fixed=len(clipped) + len(dropped))
    with_boxes = {a["image_id"] for a in kept}
    logger.info(summary.line() + f"; {len(image_ids) - len(with_boxes)} images without boxes")
    return summary
