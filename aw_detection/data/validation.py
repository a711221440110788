"""Validation of a COCO-format instances dataset before training or evaluation.

Refused, with one message naming the file, the id/field and what to do: unreadable or malformed
JSON, missing top-level keys or fields, duplicate ids, two categories with one name, annotations
pointing to unknown images or categories, box values that are not finite numbers, missing or
unreadable image files, images whose ``height``/``width`` disagree with the file (as displayed,
after EXIF rotation), a training set without annotations, and (for mask models) annotations
without ``segmentation``.

Fixed, the same way for training and evaluation, with one warning per kind: a box sticking out
of its image is clipped to it (as Detectron2's mapper would); a box with non-positive
width/height, or none of it inside the image, is dropped; what COCO leaves implicit but COCOeval
needs is filled in (``iscrowd`` 0, ``area`` from the segmentation or else the clipped box;
an image's missing ``height``/``width`` from its file).
"""
import json
import logging
import math
import os

from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import UserError, few

__all__ = ["validate_coco", "DatasetSummary"]

logger = logging.getLogger("aw_detection")

EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class DatasetSummary(dict):
    """name, json_file, image_root, images, boxes, categories (names in id order),
    category_ids (sorted), data (fixed dict), fixed (number of annotations changed)."""

    def line(self):
        return (f"dataset {self['name']}: {self['images']} images, {self['boxes']} boxes, "
                f"{len(self['categories'])} classes ({self['json_file']})")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(json_file, image_root, name):
    if not os.path.isfile(json_file):
        raise UserError(f"{name}: annotation file {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise UserError(f"{name}: image folder {image_root} does not exist")
    try:
        with open(json_file, encoding="utf-8-sig") as f:  # tolerate a byte-order mark
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
    return data


def _is_id(value):
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _check_entries(items, fields, where):
    """Every entry an object with ``fields``, ids unique and all integers or all strings;
    returns the id set."""
    seen, dups = set(), []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}[{i}] is not an object")
        missing = [f for f in fields if f not in item]
        if missing:
            raise UserError(f"{where}[{i}] (id={item.get('id')}) lacks field(s) {missing}")
        if not _is_id(item["id"]):
            raise UserError(f"{where}[{i}]: id must be an integer or string, got {item['id']!r}")
        if type(item["id"]) is not type(items[0]["id"]):
            # Ids are sorted (Detectron2's class order): integers and strings do not compare.
            raise UserError(f"{where}[{i}]: id {item['id']!r} is a {type(item['id']).__name__}, "
                            f"the first entry's id {items[0]['id']!r} a "
                            f"{type(items[0]['id']).__name__}; use one type for all ids")
        if item["id"] in seen:
            dups.append(item["id"])
        seen.add(item["id"])
    if dups:
        raise UserError(f"{where}: duplicate ids {few(sorted(set(dups), key=str))}; ids must be unique")
    return seen


def _check_category_names(categories, json_file):
    """Class names name results (AP-<name>, drawn labels): two ids with one name are ambiguous."""
    ids_by_name = {}
    for c in categories:
        ids_by_name.setdefault(c["name"], []).append(c["id"])
    shared = {n: ids for n, ids in ids_by_name.items() if len(ids) > 1}
    if shared:
        name, ids = next(iter(shared.items()))
        raise UserError(f"{json_file}: categories {few(ids)} are all named {name!r}; give each "
                        "category its own name (or merge them into one id)")


def _displayed_size(path):
    """(width, height) of an image file as displayed, i.e. after its EXIF rotation (header only)."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED:
            return height, width
        return width, height


def _check_images(data, image_root, json_file, name):
    """Files exist, are images, and have the size the JSON gives (filled in where it gives
    none); returns the ids of the images whose size was filled in."""
    missing, unreadable, mismatched, filled = [], [], [], []
    for im in data["images"]:
        given = [im[k] for k in ("height", "width") if k in im]
        if not all(_is_number(v) and v > 0 for v in given):
            raise UserError(f"{json_file}: image id={im['id']} height/width must be positive "
                            f"numbers, got {im.get('height')!r}/{im.get('width')!r}")
        path = os.path.join(image_root, str(im["file_name"]))
        if not os.path.isfile(path):
            missing.append(im["file_name"])
            continue
        try:
            size = _displayed_size(path)
        except Exception:  # PIL raises many kinds for non-images
            unreadable.append(im["file_name"])
            continue
        json_size = (im.get("width", size[0]), im.get("height", size[1]))
        if json_size != size:
            mismatched.append(f"{im['file_name']} (JSON {im.get('width', '?')}x"
                              f"{im.get('height', '?')}, file {size[0]}x{size[1]})")
        elif len(given) < 2:
            im["width"], im["height"] = size
            filled.append(im["id"])
    if missing:
        raise UserError(f"{name}: {len(missing)} image file(s) listed in {json_file} are not "
                        f"in {image_root}: {few(missing)}; fix file_name or the image folder")
    if unreadable:
        raise UserError(f"{name}: {len(unreadable)} image file(s) in {image_root} cannot be "
                        f"read as images: {few(unreadable)}; replace or remove them")
    if mismatched:
        raise UserError(
            f"{json_file}: {len(mismatched)} image(s) have a width x height other than their "
            f"file's, as displayed after EXIF rotation: {few(mismatched)}. Boxes would be "
            "placed on the wrong extent: re-export the annotations for these files (an "
            "annotation tool that ignored EXIF orientation is a common cause)")
    return filled


def _area(ann, box):
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if polygons:
            rles = mask_utils.frPyObjects(polygons, 10 ** 6, 10 ** 6)
            return float(mask_utils.area(mask_utils.merge(rles)))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        return float(mask_utils.area(rle))
    return float(box[2] * box[3])


def _fix_annotations(data, json_file, image_ids, category_ids, need_masks):
    """Annotations checked, clipped, dropped or completed; returns (kept, {kind: [ids]})."""
    images = {im["id"]: im for im in data["images"]}
    kept, fixes = [], {"clipped": [], "dropped": [], "filled": []}
    for ann in data["annotations"]:
        where = f"{json_file}: annotation id={ann['id']}"
        for key in ("image_id", "category_id"):
            if not _is_id(ann[key]):
                raise UserError(f"{where}: {key} must be an integer or string id, got {ann[key]!r}")
        if ann["image_id"] not in image_ids:
            raise UserError(f"{where} refers to image_id={ann['image_id']}, which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise UserError(f"{where} has category_id={ann['category_id']}, which is not in "
                            f"'categories' (known: {few(sorted(category_ids, key=str))})")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise UserError(f"{where}: bbox must be [x, y, width, height] of finite numbers, "
                            f"got {bbox!r}")
        for key in ("area", "iscrowd"):
            if key in ann and not _is_number(ann[key]):
                raise UserError(f"{where}: {key} must be a finite number, got {ann[key]!r}")
        if need_masks and not ann.get("segmentation"):
            raise UserError(f"{where} has no segmentation, which a mask model (MODEL.MASK_ON) "
                            "needs for every annotation")
        x, y, w, h = bbox
        im = images[ann["image_id"]]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, im["width"]), min(y + h, im["height"])
        if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
            fixes["dropped"].append(ann["id"])
            continue
        box = [x0, y0, x1 - x0, y1 - y0]
        if box != bbox:
            fixes["clipped"].append(ann["id"])
            ann = dict(ann, bbox=box)
        if "area" not in ann or "iscrowd" not in ann:
            fixes["filled"].append(ann["id"])
            ann = dict(ann, iscrowd=ann.get("iscrowd", 0),
                       area=ann["area"] if "area" in ann else _area(ann, box))
        kept.append(ann)
    return kept, fixes


FIX_MESSAGES = {
    "clipped": "boxes stick out of their image and were clipped to it",
    "dropped": "boxes have non-positive width/height or lie outside their image and were dropped",
    "filled": "annotations lack area and/or iscrowd, which COCO evaluation needs; filled in "
              "(iscrowd 0, area from the segmentation or else the box)",
}


def validate_coco(json_file, image_root, name, training=False, need_masks=False):
    """Check a COCO instances file (and its images); returns a DatasetSummary with the
    (possibly fixed) data. Raises UserError on anything that cannot be fixed safely."""
    data = _read_json(json_file, image_root, name)
    where = lambda key: f"{json_file}: {key}"  # noqa: E731
    image_ids = _check_entries(data["images"], ("id", "file_name"), where("images"))
    category_ids = _check_entries(data["categories"], ("id", "name"), where("categories"))
    _check_category_names(data["categories"], json_file)
    _check_entries(data["annotations"], ("id", "image_id", "category_id", "bbox"), where("annotations"))
    sized = _check_images(data, image_root, json_file, name)
    if sized:
        logger.warning(f"{json_file}: {len(sized)} images lack height/width; filled in from the "
                       f"files as displayed (image ids {few(sized)})")
    kept, fixes = _fix_annotations(data, json_file, image_ids, category_ids, need_masks)
    for kind, ids in fixes.items():
        if ids:
            logger.warning(f"{json_file}: {len(ids)} {FIX_MESSAGES[kind]} (annotation ids {few(ids)})")
    if training and not kept:
        raise UserError(f"{json_file}: training set {name} has no (valid) annotations; "
                        "there is nothing to learn from")

    categories = sorted(data["categories"], key=lambda c: c["id"])
    summary = DatasetSummary(
        name=name, json_file=json_file, image_root=image_root, images=len(data["images"]),
        boxes=len(kept), categories=[c["name"] for c in categories],
        category_ids=[c["id"] for c in categories], data=dict(data, annotations=kept),
        fixed=len(set().union(*fixes.values())) + len(sized),
    )
    with_boxes = {a["image_id"] for a in kept}
    logger.info(summary.line() + f"; {len(image_ids) - len(with_boxes)} images without boxes")
    return summary
