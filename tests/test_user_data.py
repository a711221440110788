"""Fine-tuning on the user's own COCO data, through the CLI tools: a right result or a one-line
refusal (exit 2, no traceback) naming the culprit, and never losing progress."""
import json
import os
import re
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from aw_detection.config import load_config
from aw_detection.data import generate_shapes, prepare_datasets

from .conftest import DEMO_CONFIG, ROOT, TINY_OPTS, run_tool, run_tool_here

AW_CONFIG = os.path.join(ROOT, "configs", "demo", "shapes_R_18_FPN_aw.yaml")
SPARSE = {"names": ["round", "box", "pointy"], "ids": [3, 7, 11]}


def _no_traceback(proc):
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


def _refused(proc, pattern):
    """Exit status 2, the message on stderr in one line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), (pattern, proc.stderr[-3000:])
    _no_traceback(proc)


def _sparse_split(root, split, seed):
    """A shapes split relabelled to three classes with sparse ids and without the area/iscrowd
    fields (as many converted exports have them)."""
    json_file = generate_shapes(str(root), split, 6, seed)
    data = json.load(open(json_file))
    remap = {1: 3, 2: 7, 3: 11, 4: 11, 5: 3}
    data["categories"] = [{"id": i, "name": n} for i, n in zip(SPARSE["ids"], SPARSE["names"])]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
        del ann["area"], ann["iscrowd"]
    with open(json_file, "w") as f:
        json.dump(data, f)
    return f"{json_file}:{root}/{split}"


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """An AW run trained (3 iterations) on the sparse-id data through tools/train_net.py."""
    root = tmp_path_factory.mktemp("sparse")
    train, val = _sparse_split(root, "train", 21), _sparse_split(root, "val", 22)
    out = str(root / "run")
    proc = run_tool("train_net.py", "--config-file", AW_CONFIG, "--dataset", f"mine_train={train}",
                    "--dataset", f"mine_val={val}", *TINY_OPTS, "DATASETS.TRAIN", "('mine_train',)",
                    "DATASETS.TEST", "('mine_val',)", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    return {"dir": out, "log": proc.stdout + proc.stderr, "val": val, "root": root}


def test_finetune_with_sparse_ids_and_implicit_fields(sparse_run):
    log, out = sparse_run["log"], sparse_run["dir"]
    assert "MODEL.ROI_HEADS.NUM_CLASSES: 5 -> 3" in log
    assert "annotations lack area and/or iscrowd" in log
    results = json.load(open(os.path.join(out, "eval_results.json")))["mine_val"]["bbox"]
    assert {"AP-round", "AP-box", "AP-pointy"} <= set(results)
    fixed = json.load(open(os.path.join(out, "datasets", "mine_val.json")))
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in fixed["annotations"])
    cfg = load_config(os.path.join(out, "config.yaml"))
    assert list(cfg.MODEL.CLASS_NAMES) == SPARSE["names"]
    assert list(cfg.MODEL.CATEGORY_IDS) == SPARSE["ids"]


def test_demo_and_inspection_from_the_run_name_its_classes(sparse_run, tmp_path):
    images = os.path.join(sparse_run["root"], "val")
    run_tool_here("demo.py", "--run", sparse_run["dir"], "--input", images, "--output",
                  str(tmp_path / "demo"), "--confidence", "0.0")
    results = json.load(open(tmp_path / "demo" / "detections.json"))
    detections = [d for r in results for d in r["detections"]]
    assert detections
    for det in detections:  # the dataset's own ids, not the contiguous training index
        assert det["category_id"] in SPARSE["ids"]
        assert det["category"] == SPARSE["names"][SPARSE["ids"].index(det["category_id"])]
    proc = run_tool_here("inspect_attention.py", "--run", sparse_run["dir"], "--input", images,
                         "--output", str(tmp_path / "inspect"), "--max-images", "2")
    assert "mass moved" in proc.stdout


def test_eval_only_from_the_run_config_and_mismatched_test_sets(sparse_run, tmp_path):
    out = sparse_run["dir"]
    args = ["--eval-only", "--config-file", os.path.join(out, "config.yaml")]
    weights = ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")]
    # Trained on CPU: a CUDA config evaluates on the CPU here, saying so (on a GPU machine the
    # run would use CUDA, so the check and the equality below need this machine's CPU).
    no_cuda = not torch.cuda.is_available()
    proc = run_tool("train_net.py", *args, "--dataset", f"mine_val={sparse_run['val']}", *weights,
                    *(["MODEL.DEVICE", "cuda"] if no_cuda else []), "OUTPUT_DIR", str(tmp_path / "eval"))
    if no_cuda:
        assert "MODEL.DEVICE is 'cuda' but CUDA is not available here: running on CPU" in proc.stderr
    again = json.load(open(tmp_path / "eval" / "eval_results.json"))["mine_val"]["bbox"]
    trained = json.load(open(os.path.join(out, "eval_results.json")))["mine_val"]["bbox"]
    assert again == trained
    # The detections COCOeval scored, in the dataset's own category ids, as training wrote them.
    results = [os.path.join(d, "inference", "mine_val", "coco_instances_results.json")
               for d in (str(tmp_path / "eval"), out)]
    evaluated, during_training = (json.load(open(path)) for path in results)
    assert evaluated and {d["category_id"] for d in evaluated} <= set(SPARSE["ids"])
    assert evaluated == during_training

    # The original five shape classes: another category set, refused before evaluating.
    other = generate_shapes(str(tmp_path / "other"), "val", 3, seed=5)
    proc = run_tool_here("train_net.py", *args, "--dataset",
                         f"other_val={other}:{tmp_path}/other/val", *weights, "DATASETS.TEST",
                         "('other_val',)", "OUTPUT_DIR", str(tmp_path / "o"), check=False)
    _refused(proc, r"test set other_val has categories \[1:circle, 2:rectangle.*but the model "
                   r"predicts those of MODEL.CLASS_NAMES .*\[3:round, 7:box, 11:pointy\]")


@pytest.mark.parametrize("case,mutate,message", [
    ("size", lambda d: d["images"][1].update(width=d["images"][1]["width"] + 7),
     r"1 image\(s\) have a width x height other than their file's.*00001.png"),
    ("nan box", lambda d: d["annotations"][2].update(bbox=[1, 2, float("nan"), 4]),
     r"annotation id=3: bbox must be \[x, y, width, height\] of finite numbers, got \[1, 2, nan, 4\]"),
    ("string box", lambda d: d["annotations"][2].update(bbox=[1, 2, "30", 4]),
     r"annotation id=3: bbox must be .*got \[1, 2, '30', 4\]"),
])
def test_cli_refuses_bad_sizes_and_boxes_before_training(tmp_path, case, mutate, message):
    json_file = generate_shapes(str(tmp_path), "bad", 4, seed=9)
    data = json.load(open(json_file))
    mutate(data)
    with open(json_file, "w") as f:
        json.dump(data, f)
    proc = run_tool_here("train_net.py", "--config-file", DEMO_CONFIG, "--dataset",
                         f"bad={json_file}:{tmp_path}/bad", *TINY_OPTS, "DATASETS.TRAIN", "('bad',)",
                         "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"), check=False)
    _refused(proc, message)
    assert not os.path.exists(tmp_path / "out" / "metrics.json")  # refused before training


def test_dataset_registration_sets_class_metadata_at_once(tmp_path):
    spec = _sparse_split(tmp_path, "reg", 7)
    prepare_datasets([f"reg_now={spec}"], (), str(tmp_path / "cache"))
    meta = MetadataCatalog.get("reg_now")
    assert meta.thing_classes == SPARSE["names"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    assert len(DatasetCatalog.get("reg_now")) == 6  # Detectron2's loader agrees with it


@pytest.fixture(scope="module")
def fifteen_class_weights(tmp_path_factory):
    cfg = load_config(AW_CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "15"])
    path = str(tmp_path_factory.mktemp("w15") / "model_15.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def test_weights_that_do_not_fit_are_refused_for_inference(fifteen_class_weights, tiny_shapes,
                                                            tmp_path):
    images = tiny_shapes["splits"]["val"][1]
    weights = ["MODEL.WEIGHTS", fifteen_class_weights]
    message = r"the checkpoint has 15 classes, the config 5: use the config.yaml of the run"
    for tool, args in (
        ("demo.py", ["--config-file", AW_CONFIG, "--input", images, "--output", str(tmp_path / "d")]),
        ("inspect_attention.py", ["--config-file", AW_CONFIG, "--input", images, "--output",
                                  str(tmp_path / "i")]),
        ("train_net.py", ["--eval-only", "--config-file", AW_CONFIG, *tiny_shapes["args"],
                          *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "e")]),
        ("export_model.py", ["--config-file", AW_CONFIG, "--format", "torchscript",
                             "--output", str(tmp_path / "x")]),
    ):
        _refused(run_tool_here(tool, *args, *weights, check=False), message)


def test_training_from_weights_of_other_classes_says_so_in_one_line(fifteen_class_weights,
                                                                     tiny_shapes, tmp_path):
    proc = run_tool("train_net.py", "--config-file", AW_CONFIG, *tiny_shapes["args"], *TINY_OPTS,
                    "MODEL.WEIGHTS", fifteen_class_weights, "SOLVER.MAX_ITER", "1",
                    "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "ft"))
    log = proc.stdout + proc.stderr
    assert re.search(r"4 checkpoint tensors do not fit the model and keep their initialisation "
                     r"\(fine-tuning from 15 to 5 classes\): roi_heads.box_predictor", log)
    assert "Skip loading parameter" not in log  # not one warning per tensor


def test_resume_with_state_that_does_not_fit_names_the_cause(sparse_run, tmp_path):
    out = str(tmp_path / "resume")
    shutil.copytree(sparse_run["dir"], out, ignore=shutil.ignore_patterns("datasets"))
    args = ["--resume", "--dataset", f"mine_val={sparse_run['val']}", *TINY_OPTS,
            "DATASETS.TRAIN", "('mine_val',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "5",
            "OUTPUT_DIR", out]
    # A baseline config cannot continue an AW run: its attention would be dropped.
    proc = run_tool_here("train_net.py", "--config-file", DEMO_CONFIG, *args, check=False)
    _refused(proc, r"tensors the model lacks: backbone.bottom_up.res3.0.conv1.generator.*"
                   r"checkpoint has attention the config does not enable")
    # The same model, but frozen stem: the optimizer state no longer fits its parameters.
    proc = run_tool_here("train_net.py", "--config-file", AW_CONFIG, *args,
                         "MODEL.BACKBONE.FREEZE_AT", "1", check=False)
    _refused(proc, r"model_final.pth: its optimizer/scheduler state does not fit this run .*"
                   r"start a new run from its weights with MODEL.WEIGHTS")
    # A damaged last checkpoint is named as what it is, not as MODEL.WEIGHTS.
    with open(os.path.join(out, "model_broken.pth"), "wb") as f:
        f.write(b"\x80\x04 truncated")
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_broken.pth")
    proc = run_tool_here("train_net.py", "--config-file", AW_CONFIG, *args, check=False)
    _refused(proc, r"^error: the last checkpoint \(--resume\) \S*model_broken.pth is not a "
                   r"readable Detectron2 checkpoint")
    os.remove(os.path.join(out, "model_broken.pth"))  # a last checkpoint that is gone
    proc = run_tool_here("train_net.py", "--config-file", AW_CONFIG, *args, check=False)
    _refused(proc, r"^error: the last checkpoint \(--resume\) \S*model_broken.pth cannot be "
                   r"opened \(Checkpoint \S* not found!\)\.$")


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
        _refused(run_tool_here("train_net.py", *args, *out, check=False), message)


def test_corrupt_or_foreign_weights(tiny_shapes, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    torch.save({"model": {"some.other.layer": torch.zeros(3)}}, tmp_path / "foreign.pth")
    for weights, message in ((corrupt, "corrupt.pth is not a readable Detectron2 checkpoint"),
                             (tmp_path / "foreign.pth", "match none of the model's parameters")):
        proc = run_tool_here("train_net.py", "--eval-only", "--config-file", DEMO_CONFIG,
                             *tiny_shapes["args"], *TINY_OPTS, "MODEL.WEIGHTS", str(weights),
                             "OUTPUT_DIR", str(tmp_path / "o"), check=False)
        _refused(proc, message)


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
