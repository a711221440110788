"""COCO-format validation of the user's data: what is refused, what is fixed, image reading."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from aw_detection.config import load_config
from aw_detection.data import RobustDatasetMapper, generate_shapes, read_image
from aw_detection.data.validation import validate_coco
from aw_detection.errors import UserError

from .conftest import DEMO_CONFIG


@pytest.fixture
def coco(tmp_path):
    """A small valid dataset we can break: (json path, image dir, data dict)."""
    json_file = generate_shapes(str(tmp_path), "mine", 5, seed=3)
    return json_file, str(tmp_path / "mine"), json.load(open(json_file))


def _write(json_file, data):
    with open(json_file, "w") as f:
        json.dump(data, f)


def _broken(coco, mutate):
    json_file, image_dir, data = coco
    mutate(data)
    _write(json_file, data)
    return json_file, image_dir


def _set_bbox(value):
    return lambda d: d["annotations"][0].update(bbox=value)


# (mutation, the message, which names the JSON file unless said otherwise)
CASES = {
    "missing key": (lambda d: d.pop("categories"), r"missing or non-list top-level key\(s\) \['categories'\]"),
    "duplicate image id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "images: duplicate ids 1;"),
    "duplicate annotation id": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "annotations: duplicate ids"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=999), "annotation id=1 refers to image_id=999"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=42), "annotation id=1 has category_id=42"),
    "image field": (lambda d: d["images"][2].pop("file_name"), r"images\[2\] \(id=3\) lacks field\(s\) \['file_name'\]"),
    "bbox length": (_set_bbox([1, 2, 3]), "annotation id=1: bbox must be .* finite numbers"),
    "bbox NaN": (_set_bbox([1, 2, float("nan"), 4]), r"annotation id=1: bbox .*got \[1, 2, nan, 4\]"),
    "bbox Inf": (_set_bbox([1, 2, 3, float("inf")]), r"annotation id=1: bbox .*got \[1, 2, 3, inf\]"),
    "bbox bool": (_set_bbox([1, 2, True, 4]), r"annotation id=1: bbox .*got \[1, 2, True, 4\]"),
    "bbox string": (_set_bbox([1, "2", 3, 4]), r"annotation id=1: bbox .*got \[1, '2', 3, 4\]"),
    "area string": (lambda d: d["annotations"][0].update(area="big"), "annotation id=1: area must be a finite number, got 'big'"),
    "image size string": (lambda d: d["images"][0].update(height="256"), "image id=1 height/width must be positive numbers"),
    "mixed category id types": (lambda d: d["categories"][2].update(id="3"), r"categories\[2\]: id '3' is a str, the first entry's id 1 a int; use one type"),
    "image_id a list": (lambda d: d["annotations"][0].update(image_id=[1]), r"annotation id=1: image_id must be an integer or string id, got \[1\]"),
    "category_id a dict": (lambda d: d["annotations"][0].update(category_id={"id": 1}), "annotation id=1: category_id must be an integer or string id"),
    "only width, wrong": (lambda d: (d["images"][0].pop("height"), d["images"][0].update(width=999)), r"00000.png \(JSON 999x\?, file \d+x\d+\)"),
}


@pytest.mark.parametrize("case", CASES)
def test_invalid_data_is_refused_naming_file_and_field(coco, case):
    mutate, message = CASES[case]
    json_file, image_dir = _broken(coco, mutate)
    with pytest.raises(UserError, match=message) as info:
        validate_coco(json_file, image_dir, "mine", training=True)
    assert json_file in str(info.value)


def test_missing_image_file_names_dataset_file_and_folder(coco):
    json_file, image_dir = _broken(coco, lambda d: d["images"][0].update(file_name="nope.png"))
    with pytest.raises(UserError, match=r"mine: 1 image file\(s\) listed in .*mine.json are not "
                                        r"in .*: nope.png"):
        validate_coco(json_file, image_dir, "mine")


def test_malformed_json_and_missing_files(coco, tmp_path):
    json_file, image_dir, _ = coco
    with open(json_file, "w") as f:
        f.write('{"images": [}')
    with pytest.raises(UserError, match="mine.json: not valid JSON \\(line 1, column 13"):
        validate_coco(json_file, image_dir, "mine")
    with pytest.raises(UserError, match="annotation file .*nothing.json does not exist"):
        validate_coco(str(tmp_path / "nothing.json"), image_dir, "mine")


def test_bad_boxes_are_clipped_or_dropped_with_a_warning(coco, caplog):
    json_file, image_dir, data = coco
    first, second = data["annotations"][:2]
    width = next(im["width"] for im in data["images"] if im["id"] == first["image_id"])
    first["bbox"] = [width - 10, 5, 50, 20]  # sticks out on the right
    second["bbox"] = [5, 5, 0, 10]  # zero width
    _write(json_file, data)
    summary = validate_coco(json_file, image_dir, "mine", training=True)
    kept = {a["id"]: a for a in summary["data"]["annotations"]}
    assert kept[first["id"]]["bbox"] == [width - 10, 5, 10, 20]
    assert second["id"] not in kept
    assert summary["fixed"] == 2 and summary["boxes"] == len(data["annotations"]) - 1
    text = caplog.text
    assert "1 boxes stick out of their image and were clipped" in text and "were dropped" in text


def test_missing_area_and_iscrowd_are_filled_from_the_clipped_box(coco, caplog):
    json_file, image_dir, data = coco
    for ann in data["annotations"]:
        del ann["area"], ann["iscrowd"]
    first = data["annotations"][0]
    image = next(im for im in data["images"] if im["id"] == first["image_id"])
    first["bbox"] = [image["width"] - 10, 4, 30, 6]  # 30 wide, 10 of it inside
    data["annotations"][1]["segmentation"] = [[0, 0, 8, 0, 8, 8, 0, 8]]  # an 8x8 square
    _write(json_file, data)
    summary = validate_coco(json_file, image_dir, "mine", training=True)
    anns = summary["data"]["annotations"]
    assert all(a["iscrowd"] == 0 for a in anns)
    assert anns[0]["area"] == 10 * 6
    assert anns[1]["area"] == 64
    x, y, w, h = anns[2]["bbox"]
    assert anns[2]["area"] == w * h
    assert summary["fixed"] == len(anns)
    assert f"{len(anns)} annotations lack area and/or iscrowd" in caplog.text
    assert "area" not in json.load(open(json_file))["annotations"][0]  # the user's file is untouched


def test_missing_image_size_is_read_from_the_file_and_duplicate_names_refused(coco, caplog):
    json_file, image_dir, data = coco
    expected = [(im["height"], im["width"]) for im in data["images"]]
    for im in data["images"][:2]:
        del im["height"], im["width"]
    _write(json_file, data)
    summary = validate_coco(json_file, image_dir, "mine")
    assert [(im["height"], im["width"]) for im in summary["data"]["images"]] == expected
    assert "2 images lack height/width; filled in from the files" in caplog.text
    data["images"][0]["width"] = expected[0][1]  # one side given, and right: the other filled
    _write(json_file, data)
    summary = validate_coco(json_file, image_dir, "mine")
    assert [(im["height"], im["width"]) for im in summary["data"]["images"]] == expected
    data["categories"][3]["name"] = data["categories"][1]["name"]
    _write(json_file, data)
    with pytest.raises(UserError, match="mine.json: categories 2, 4 are all named 'rectangle'"):
        validate_coco(json_file, image_dir, "mine")


def test_mask_models_need_segmentation(coco):
    json_file, image_dir, _ = coco
    with pytest.raises(UserError, match="annotation id=1 has no segmentation, which a mask model"):
        validate_coco(json_file, image_dir, "mine", need_masks=True)


def test_training_set_without_annotations(coco):
    json_file, image_dir = _broken(coco, lambda d: d.update(annotations=[]))
    with pytest.raises(UserError, match="training set mine has no \\(valid\\) annotations"):
        validate_coco(json_file, image_dir, "mine", training=True)
    assert validate_coco(json_file, image_dir, "mine", training=False)["boxes"] == 0


def test_unreadable_image_is_an_error(coco):
    json_file, image_dir, data = coco
    with open(os.path.join(image_dir, data["images"][0]["file_name"]), "wb") as f:
        f.write(b"this is not a png")
    with pytest.raises(UserError, match="1 image file\\(s\\) .* cannot be read as images: 00000.png"):
        validate_coco(json_file, image_dir, "mine")


def _exif_jpeg(path, width, height, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path, exif=exif)


def test_image_size_must_match_the_file_as_displayed(coco):
    json_file, image_dir, data = coco
    first = data["images"][0]
    first["width"], first["height"] = first["height"] + 1, first["width"]
    _write(json_file, data)
    with pytest.raises(UserError, match=r"1 image\(s\) have a width x height other than their "
                                        r"file's.*00000.png \(JSON \d+x\d+, file \d+x\d+\)"):
        validate_coco(json_file, image_dir, "mine")

    # A JPEG stored 40x20 that its EXIF rotates to 20x40: the JSON must give the displayed size.
    data = json.load(open(generate_shapes(os.path.dirname(json_file), "mine", 5, seed=3)))
    data["images"][0].update(file_name="rotated.jpg", width=20, height=40)
    data["annotations"] = [dict(a, bbox=[1, 1, 5, 5]) if a["image_id"] == 1 else a
                           for a in data["annotations"]]
    _exif_jpeg(os.path.join(image_dir, "rotated.jpg"), 40, 20, orientation=6)
    _write(json_file, data)
    assert validate_coco(json_file, image_dir, "mine")["images"] == 5
    data["images"][0].update(width=40, height=20)  # the raw pixel size: an EXIF-unaware export
    _write(json_file, data)
    with pytest.raises(UserError, match=r"rotated.jpg \(JSON 40x20, file 20x40\).*EXIF"):
        validate_coco(json_file, image_dir, "mine")


def _pattern(h=24, w=32):
    return (np.arange(h * w).reshape(h, w) % 200 + 20).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16"])
def test_image_modes_load_as_bgr(tmp_path, mode):
    gray = _pattern()
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        img = Image.fromarray(gray).convert(mode)
    path = str(tmp_path / "img.png")
    img.save(path)
    array = read_image(path, "BGR")
    assert array.shape == (24, 32, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array[..., 0], gray)  # 16-bit too: v*257 -> v, not white


def test_exif_rotated_jpeg(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rot.jpg")
    Image.fromarray(img).save(path, exif=exif, quality=95)
    array = read_image(path, "RGB")
    assert array.shape == (40, 20, 3)
    assert array[:10].mean() > 200 and array[-10:].mean() < 50  # the band is now at the top


def test_corrupt_image_skipped_in_training_error_in_evaluation(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.stack([_pattern()] * 3, -1)).save(path)
    path.write_bytes(path.read_bytes()[:60])  # valid header, truncated data
    cfg = load_config(DEMO_CONFIG)
    record = {"file_name": str(path), "height": 24, "width": 32, "image_id": 1, "annotations": []}
    assert RobustDatasetMapper(cfg, True)(record) is None
    with pytest.raises(UserError, match="cut.png cannot be decoded"):
        RobustDatasetMapper(cfg, False)(record)
