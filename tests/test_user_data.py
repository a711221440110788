"""Fine-tuning on the user's COCO data: validation, image formats, errors, never losing progress."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from aw_detection.data import RobustDatasetMapper, generate_shapes, read_image
from aw_detection.data.validation import validate_coco
from aw_detection.config import load_config
from aw_detection.errors import UserError

from .conftest import DEMO_CONFIG, ROOT, TINY_OPTS, run_tool


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


CASES = {
    "missing key": (lambda d: d.pop("categories"), "missing or non-list top-level key\\(s\\) \\['categories'\\]"),
    "duplicate image id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "images: duplicate ids 1;"),
    "duplicate annotation id": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "annotations: duplicate ids"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=999), "annotation id=1 refers to image_id=999"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=42), "annotation id=1 has category_id=42"),
    "image field": (lambda d: d["images"][2].pop("file_name"), "images\\[2\\] \\(id=3\\) lacks field\\(s\\) \\['file_name'\\]"),
    "bbox format": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation id=1: bbox must be"),
    "missing image file": (lambda d: d["images"][0].update(file_name="nope.png"), "1 image file\\(s\\) .* not in .*: nope.png"),
}


@pytest.mark.parametrize("case", CASES)
def test_validation_errors_name_file_and_field(coco, case):
    mutate, message = CASES[case]
    json_file, image_dir = _broken(coco, mutate)
    with pytest.raises(UserError, match=message) as info:
        validate_coco(json_file, image_dir, "mine", training=True)
    assert json_file in str(info.value) or "mine" in str(info.value)


def test_malformed_json_and_missing_files(coco, tmp_path):
    json_file, image_dir, _ = coco
    with open(json_file, "w") as f:
        f.write('{"images": [}')
    with pytest.raises(UserError, match="not valid JSON \\(line 1, column 13"):
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


def _no_traceback(proc):
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_cli_reports_input_errors_without_traceback(tiny_shapes, tmp_path):
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    cases = [
        (["--config-file", str(tmp_path / "missing.yaml")], "config file .*missing.yaml does not exist"),
        (["--config-file", DEMO_CONFIG, "MODEL.AW.ENABLE", "True"],
         "unknown config key MODEL.AW.ENABLE. Did you mean MODEL.AW.ENABLED"),
        (["--config-file", DEMO_CONFIG, "--eval-only"], "--eval-only needs trained weights"),
        (["--config-file", DEMO_CONFIG, "MODEL.WEIGHTS", str(tmp_path / "none.pth")],
         "MODEL.WEIGHTS .*none.pth does not exist"),
        (["--config-file", DEMO_CONFIG, "DATASETS.TRAIN", "('mine',)"], "'mine', which is not registered"),
        (["--config-file", DEMO_CONFIG, "MODEL.AW.ENABLED", "True", "MODEL.AW.ATTENTION_GROUPS", "3"],
         "res3: AWConv2d: attention_groups must divide out_channels=128.*check MODEL.AW"),
        (["--config-file", DEMO_CONFIG, *tiny_shapes["args"], "MODEL.ROI_HEADS.NUM_CLASSES", "3",
          "DATASETS.TRAIN", "('tiny_train',)"], "NUM_CLASSES=3 but training set tiny_train has 5"),
    ]
    for args, message in cases:
        proc = run_tool("train_net.py", *args, *out, check=False)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert re.search(message, proc.stderr), (message, proc.stderr[-2000:])
        _no_traceback(proc)


def test_corrupt_or_foreign_weights(tiny_shapes, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    proc = run_tool("train_net.py", "--eval-only", "--config-file", DEMO_CONFIG, *tiny_shapes["args"],
                    *TINY_OPTS, "MODEL.WEIGHTS", str(corrupt), "OUTPUT_DIR", str(tmp_path / "o"),
                    check=False)
    assert proc.returncode == 2 and "is not a readable Detectron2 checkpoint" in proc.stderr
    _no_traceback(proc)
    import torch

    torch.save({"model": {"some.other.layer": torch.zeros(3)}}, tmp_path / "foreign.pth")
    proc = run_tool("train_net.py", "--eval-only", "--config-file", DEMO_CONFIG, *tiny_shapes["args"],
                    *TINY_OPTS, "MODEL.WEIGHTS", str(tmp_path / "foreign.pth"),
                    "OUTPUT_DIR", str(tmp_path / "o2"), check=False)
    assert proc.returncode == 2 and "match none of the model's parameters" in proc.stderr
    _no_traceback(proc)


def test_finetune_on_own_data_with_sparse_category_ids(tmp_path):
    root = tmp_path / "mine"
    for split, seed in (("train", 21), ("val", 22)):
        json_file = generate_shapes(str(root), split, 6, seed)
        data = json.load(open(json_file))
        remap = {1: 3, 2: 7, 3: 11, 4: 11, 5: 3}  # three classes, ids not contiguous
        data["categories"] = [{"id": 3, "name": "round"}, {"id": 7, "name": "box"},
                              {"id": 11, "name": "pointy"}]
        for ann in data["annotations"]:
            ann["category_id"] = remap[ann["category_id"]]
        _write(json_file, data)
    out = str(tmp_path / "run")
    proc = run_tool("train_net.py", "--config-file", DEMO_CONFIG,
                    "--dataset", f"mine_train={root}/train.json:{root}/train",
                    "--dataset", f"mine_val={root}/val.json:{root}/val",
                    *TINY_OPTS, "DATASETS.TRAIN", "('mine_train',)", "DATASETS.TEST", "('mine_val',)",
                    "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out)
    log = proc.stdout + proc.stderr
    assert "MODEL.ROI_HEADS.NUM_CLASSES: 5 -> 3" in log
    assert "dataset mine_train: 6 images" in log
    results = json.load(open(os.path.join(out, "eval_results.json")))["mine_val"]["bbox"]
    assert {"AP-round", "AP-box", "AP-pointy"} <= set(results)


def _last_lr(output_dir):
    lines = [json.loads(l) for l in open(os.path.join(output_dir, "metrics.json"))]
    return [l for l in lines if "lr" in l][-1]


def test_resume_after_sigkill_continues_the_schedule(tiny_shapes, tmp_path):
    opts = [*tiny_shapes["args"], *TINY_OPTS, "SOLVER.MAX_ITER", "14", "SOLVER.STEPS", "(7,)",
            "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", DEMO_CONFIG,
           *opts, "OUTPUT_DIR", killed]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(killed, "model_0000005.pth")
    deadline = time.time() + 300
    while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.2)  # mid-way to the next checkpoint, far from the end (14 iterations)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "model_final.pth")), "killed too late"
    last = open(os.path.join(killed, "last_checkpoint")).read().strip()
    start = int(last[len("model_"):-len(".pth")]) + 1

    resumed = run_tool("train_net.py", "--resume", "--config-file", DEMO_CONFIG, *opts, "OUTPUT_DIR", killed)
    assert f"Starting training from iteration {start}" in resumed.stdout + resumed.stderr
    straight = str(tmp_path / "straight")
    run_tool("train_net.py", "--config-file", DEMO_CONFIG, *opts, "OUTPUT_DIR", straight)
    a, b = _last_lr(killed), _last_lr(straight)
    assert a["iteration"] == b["iteration"] == 13
    assert a["lr"] == pytest.approx(b["lr"]) and a["lr"] < 0.5 * 0.005  # after the step at 7


def test_diverging_loss_stops_with_hint_and_keeps_checkpoint(tiny_shapes, tmp_path):
    out = str(tmp_path / "nan")
    proc = run_tool("train_net.py", "--config-file", DEMO_CONFIG, *tiny_shapes["args"], *TINY_OPTS,
                    "SOLVER.BASE_LR", "1e6", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
                    "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", out,
                    check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert re.search("training stopped at iteration [0-9]+: .*(NaN|Inf)", proc.stderr), proc.stderr[-1500:]
    assert "Lower SOLVER.BASE_LR" in proc.stderr and "last good checkpoint is" in proc.stderr
    assert "start from it with MODEL.WEIGHTS" in proc.stderr
    _no_traceback(proc)
    last = open(os.path.join(out, "last_checkpoint")).read().strip()
    assert os.path.exists(os.path.join(out, last)) and not os.path.exists(os.path.join(out, "model_final.pth"))
