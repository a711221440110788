"""Classification pre-training and ResNet weights from elsewhere: train + evaluate through
tools/train_classification.py, its checkpoint in the detectors tensor for tensor, torchvision
state dicts value for value (and output for output), and the input errors."""
import argparse
import logging
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from aw_detection.checkpoint.backbone_weights import TORCHVISION_SETTINGS, apply_torchvision_settings
from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.data.classification import check_image_folder
from aw_detection.engine.classification import evaluate_classifier, setup_classification
from aw_detection.data.classification import ClassificationFolder, _collate, _transform
from aw_detection.data.shapes_classification import generate_shapes_classification
from aw_detection.config import load_config
from aw_detection.errors import UserError
from aw_detection.evaluation import read_eval_results

from .conftest import ROOT, run_tool, run_tool_here

CLS = os.path.join(ROOT, "configs", "classification")
DEMO = os.path.join(ROOT, "configs", "demo")
COCO = os.path.join(ROOT, "configs", "COCO-Detection")
# Tiny and fast: 32-px crops, 4 images per step.
TINY_CLS_OPTS = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
                 "INPUT.CLASSIFICATION.TRAIN_SIZE", "32", "INPUT.CLASSIFICATION.TEST_RESIZE", "32",
                 "INPUT.CLASSIFICATION.TEST_SIZE", "32"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An ImageFolder of shapes crops: 4 train and 2 val images per class."""
    root = str(tmp_path_factory.mktemp("tiny_cls"))
    generate_shapes_classification(root, "train", 4, 31)
    generate_shapes_classification(root, "val", 2, 32)
    return root


@pytest.fixture(scope="module")
def aw_run(tiny_folder, tmp_path_factory):
    """A 3-iteration AW-lite pre-training run (the demo's AW backbone)."""
    out = str(tmp_path_factory.mktemp("cls_run"))
    run_tool("train_classification.py", "--config-file", f"{CLS}/shapes_R_18_aw.yaml",
             "--data-dir", tiny_folder, *TINY_CLS_OPTS, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    return out


def test_classification_trains_evaluates_and_reloads(aw_run, tiny_folder, tmp_path):
    results = read_eval_results(aw_run)
    assert set(results) == {"top1", "top5"}
    assert 0 <= results["top1"] <= 100 and results["top5"] == 100.0  # 5 classes: top-5 is all
    assert "total_loss" in open(os.path.join(aw_run, "metrics.json")).read()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(aw_run))  # tensorboard
    cfg = load_config(os.path.join(aw_run, "config.yaml"))
    assert list(cfg.MODEL.CLASS_NAMES) == sorted(os.listdir(os.path.join(tiny_folder, "train")))
    again = str(tmp_path / "eval")
    run_tool("train_classification.py", "--config-file", f"{CLS}/shapes_R_18_aw.yaml", "--eval-only",
             "--data-dir", tiny_folder, *TINY_CLS_OPTS, "MODEL.WEIGHTS",
             os.path.join(aw_run, "model_final.pth"), "OUTPUT_DIR", again)
    assert read_eval_results(again) == results


def test_resume_continues_the_run(tiny_folder, tmp_path):
    out = str(tmp_path / "run")
    args = ["--config-file", f"{CLS}/shapes_R_18.yaml", "--data-dir", tiny_folder, *TINY_CLS_OPTS,
            "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", out]
    run_tool("train_classification.py", *args, "SOLVER.MAX_ITER", "2")
    proc = run_tool("train_classification.py", "--resume", *args, "SOLVER.MAX_ITER", "4")
    assert "Starting training from iteration 2" in proc.stdout + proc.stderr


def test_amp_on_cpu_trains_under_bfloat16_autocast(tiny_folder, tmp_path):
    out = str(tmp_path / "amp")
    proc = run_tool("train_classification.py", "--config-file", f"{CLS}/shapes_R_18_aw.yaml",
                    "--data-dir", tiny_folder, *TINY_CLS_OPTS, "SOLVER.AMP.ENABLED", "True",
                    "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out)
    # The trainer that runs the forward under bfloat16 autocast (test_train_net checks it does).
    assert "SOLVER.AMP.ENABLED on CPU: bfloat16 autocast" in proc.stdout + proc.stderr


def _classifier_backbone(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def test_pretrained_checkpoint_loads_into_fpn_detector_tensor_for_tensor(aw_run, caplog):
    trained = _classifier_backbone(os.path.join(aw_run, "model_final.pth"))
    generators = [k for k in trained if ".generator." in k]
    assert generators and any(trained[k].abs().sum() > 0 for k in generators if "expand" in k)
    cfg = load_config(f"{DEMO}/shapes_R_18_FPN_aw.yaml")
    model = build_model(cfg)
    with caplog.at_level(logging.INFO, logger="aw_detection"):
        AWCheckpointer(model).load(os.path.join(aw_run, "model_final.pth"))
    detector = model.backbone.bottom_up.state_dict()
    assert set(detector) == set(trained)  # every backbone tensor, attention included
    for name, value in detector.items():
        assert torch.equal(value, trained[name]), name
    lines = [r.getMessage() for r in caplog.records if "classification checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "backbone.bottom_up." in lines[0] and "5 classes) is dropped" in lines[0]


def test_pretrained_checkpoint_loads_into_plain_resnet_detector(aw_run):
    trained = _classifier_backbone(os.path.join(aw_run, "model_final.pth"))
    cfg = load_config(f"{DEMO}/shapes_R_18_FPN_aw.yaml", [
        "MODEL.BACKBONE.NAME", "build_aw_resnet_backbone", "MODEL.RESNETS.OUT_FEATURES", "['res5']",
        "MODEL.RPN.IN_FEATURES", "['res5']", "MODEL.ROI_HEADS.IN_FEATURES", "['res5']",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[32, 64, 128]]"])
    model = build_model(cfg)
    AWCheckpointer(model, strict=False).load(os.path.join(aw_run, "model_final.pth"))
    backbone = model.backbone.state_dict()
    assert set(backbone) == set(trained)
    assert all(torch.equal(v, trained[k]) for k, v in backbone.items())


def test_imagenet_classifier_loads_into_the_coco_detector(tmp_path):
    """configs/classification/imagenet_R_50_aw_lite (BatchNorm) -> the COCO AW-lite Faster
    R-CNN (FrozenBN): every backbone tensor, statistics and attention included, value for value."""
    torch.manual_seed(0)
    classifier = build_model(load_config(f"{CLS}/imagenet_R_50_aw_lite.yaml", ["MODEL.DEVICE", "cpu"]))
    with torch.no_grad():
        for name, value in classifier.state_dict().items():
            if value.is_floating_point():  # non-trivial statistics and attention
                value.uniform_(0.5, 1.5)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": classifier.state_dict()}, path)
    trained = _classifier_backbone(path)
    detector = build_model(load_config(f"{COCO}/faster_rcnn_R_50_FPN_1x_aw_lite.yaml",
                                       ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]))
    AWCheckpointer(detector).load(path)
    backbone = detector.backbone.bottom_up.state_dict()
    assert set(backbone) == {k for k in trained if not k.endswith("num_batches_tracked")}
    for name, value in backbone.items():
        assert torch.equal(value, trained[name]), name


def _torchvision_state(arch, path, num_classes=1000):
    """A randomly initialised torchvision ResNet with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=num_classes).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    torch.save(net.state_dict(), path)
    return net


def test_torchvision_resnet50_loads_value_for_value(tmp_path, caplog):
    path = str(tmp_path / "resnet50-random.pth")
    net = _torchvision_state("resnet50", path)
    cfg = load_config(f"{COCO}/faster_rcnn_R_50_FPN_1x.yaml", ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path])
    with caplog.at_level(logging.INFO, logger="aw_detection"):
        assert apply_torchvision_settings(cfg)
    assert sum("is a torchvision ResNet: set " in r.getMessage() for r in caplog.records) == 1
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert list(cfg.MODEL.PIXEL_STD) == TORCHVISION_SETTINGS["MODEL.PIXEL_STD"]
    model = build_model(cfg).eval()
    AWCheckpointer(model).load(path)
    ours = model.backbone.bottom_up.state_dict()
    theirs = net.state_dict()
    renames = {"conv1.weight": "stem.conv1.weight", "bn1.running_var": "stem.conv1.norm.running_var",
               "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
               "layer3.5.bn3.bias": "res4.5.conv3.norm.bias",
               "layer4.2.conv2.weight": "res5.2.conv2.weight"}
    for tv, d2 in renames.items():
        assert torch.equal(ours[d2], theirs[tv]), tv
    loaded = [k for k in theirs if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(ours) == len(loaded)  # every ResNet tensor has a torchvision source
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        assert torch.allclose(model.backbone.bottom_up(x)["res5"], expected, atol=1e-4, rtol=1e-4)


def test_torchvision_weights_in_an_aw_classifier_give_torchvision_logits(tmp_path):
    """AW inserted at zero into torchvision's ResNet-18, its fc as our head: same logits."""
    path = str(tmp_path / "resnet18.pth")
    net = _torchvision_state("resnet18", path, num_classes=5)
    cfg = load_config(f"{CLS}/shapes_R_18_aw.yaml", ["MODEL.RESNETS.NORM", "BN", "MODEL.WEIGHTS", path])
    apply_torchvision_settings(cfg)
    model = build_model(cfg).eval()
    AWCheckpointer(model, strict=True).load(path)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((images.float() / 255 - mean) / std)
        assert torch.allclose(model({"image": images}), expected, atol=1e-4, rtol=1e-4)


def test_torchvision_settings_are_checked(tmp_path):
    path = str(tmp_path / "resnet18.pth")
    _torchvision_state("resnet18", path)
    cfg = load_config(f"{DEMO}/shapes_R_18_FPN.yaml", ["MODEL.WEIGHTS", path])
    with pytest.raises(UserError, match="RESNETS.NORM must be one of"):
        apply_torchvision_settings(cfg)  # GroupNorm has no BatchNorm statistics
    cfg = load_config(f"{DEMO}/shapes_R_18_FPN.yaml", ["MODEL.WEIGHTS", path, "MODEL.RESNETS.NORM", "BN",
                                                       "INPUT.FORMAT", "BGR"])
    with pytest.raises(UserError, match="needs INPUT.FORMAT RGB, but the command line sets BGR"):
        apply_torchvision_settings(cfg, explicit_keys=["INPUT.FORMAT"])
    model = build_model(cfg)  # built without the settings (e.g. weights given as a URL)
    with pytest.raises(UserError, match="built for other inputs .*INPUT.FORMAT is BGR"):
        AWCheckpointer(model).load(path)


def _folder(tmp_path, layout):
    """layout: {"train/a": n_images, ...}; returns the root."""
    from PIL import Image

    root = tmp_path / "data"
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / folder / f"{i}.png")
    return str(root)


@pytest.mark.parametrize("layout,message", [
    ({"train/a": 1}, "has no val/ folder"),
    ({"train/a": 1, "val": 0}, "has no class folders"),
    ({"train/a": 1, "train/b": 0, "val/a": 1, "val/b": 1}, r"class folder\(s\) without images: b"),
    ({"train/a": 1, "train/b": 1, "val/a": 1, "val/c": 1},
     r"different classes \(only in train: b; only in val: c\)"),
])
def test_bad_image_folders(tmp_path, layout, message):
    with pytest.raises(UserError, match=message):
        check_image_folder(_folder(tmp_path, layout))


def test_unreadable_and_corrupt_images(tmp_path, caplog):
    root = _folder(tmp_path, {"train/a": 2, "val/a": 2})
    bad = os.path.join(root, "val", "a", "9.png")
    open(bad, "wb").write(b"not an image")
    with pytest.raises(UserError, match=r"1 file\(s\) cannot be read as images: .*9.png"):
        check_image_folder(root)
    os.remove(bad)
    assert check_image_folder(root) == ["a"]
    # A readable header with corrupt data: skipped in training, an error in evaluation.
    good = os.path.join(root, "val", "a", "1.png")
    data = open(good, "rb").read()
    cfg = load_config(f"{CLS}/shapes_R_18.yaml", ["INPUT.CLASSIFICATION.TEST_RESIZE", "8",
                                                  "INPUT.CLASSIFICATION.TEST_SIZE", "8"])
    for split in ("train", "val"):
        open(os.path.join(root, split, "a", "1.png"), "wb").write(data[: len(data) // 2])
    train = ClassificationFolder(os.path.join(root, "train"), _transform(cfg, False), training=True)
    with caplog.at_level(logging.WARNING, logger="aw_detection"):
        item = train[1]
    assert item["error"] == "" and item["image"].shape == (3, 8, 8)
    assert any("Skipping image" in r.getMessage() and "1.png" in r.getMessage() for r in caplog.records)
    val = ClassificationFolder(os.path.join(root, "val"), _transform(cfg, False), training=False)
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 1
    model = build_model(cfg)
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=_collate)
    with pytest.raises(UserError, match=r"image .*1.png cannot be decoded"):
        evaluate_classifier(model, loader, 1)


def test_cli_errors_without_traceback(tmp_path, tiny_folder):
    proc = run_tool_here("train_classification.py", "--config-file", f"{CLS}/shapes_R_18.yaml",
                         "--data-dir", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "error: image folder" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    def setup(config, *opts):
        args = argparse.Namespace(config_file=config, data_dir=tiny_folder,
                                  opts=[*opts, "OUTPUT_DIR", str(tmp_path / "out")],
                                  eval_only=False, resume=False)
        return setup_classification(args)

    with pytest.raises(UserError, match="is not a classification config"):
        setup(f"{DEMO}/shapes_R_18_FPN.yaml")
    with pytest.raises(UserError, match="NUM_CLASSES=7 but the image folder has 5 classes"):
        setup(f"{CLS}/shapes_R_18.yaml", "MODEL.CLASSIFIER.NUM_CLASSES", "7")


def test_top1_and_top5_against_ranks():
    """evaluate_classifier's top-k over 7 classes, against each label's rank among the logits."""

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            return batch["logits"]

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(23, 7, generator=gen), torch.randint(0, 7, (23,), generator=gen)
    loader = [{"logits": logits[i:i + 10], "label": labels[i:i + 10], "error": [""] * 10}
              for i in range(0, 23, 10)]
    rank = (logits > logits.gather(1, labels[:, None])).sum(1)  # 0: the label scores highest
    results = evaluate_classifier(Fixed(), loader, num_classes=7)
    assert results["top1"] == pytest.approx(100 * (rank == 0).float().mean().item())
    assert results["top5"] == pytest.approx(100 * (rank < 5).float().mean().item())
    assert 0 < results["top1"] < results["top5"] < 100  # the three cases all occur


def test_transforms_are_the_imagenet_recipe():
    cfg = load_config(os.path.join(CLS, "shapes_R_18.yaml"))
    c = cfg.INPUT.CLASSIFICATION
    crop, flip, _ = _transform(cfg, True).transforms
    assert isinstance(crop, torchvision.transforms.RandomResizedCrop)
    assert crop.size == (c.TRAIN_SIZE, c.TRAIN_SIZE) and crop.scale == (c.MIN_SCALE, 1.0)
    assert isinstance(flip, torchvision.transforms.RandomHorizontalFlip) and flip.p == 0.5
    # Evaluation: shorter side to TEST_RESIZE, then the central TEST_SIZE square.
    pixels = torch.arange(90 * 120 * 3, dtype=torch.int64).remainder(251).to(torch.uint8)
    image = Image.fromarray(pixels.view(90, 120, 3).numpy())
    cfg.merge_from_list(["INPUT.CLASSIFICATION.TEST_RESIZE", "60", "INPUT.CLASSIFICATION.TEST_SIZE", "40"])
    out = _transform(cfg, False)(image)
    resized = torch.from_numpy(np.asarray(image.resize((80, 60), Image.BILINEAR)))
    assert out.shape == (3, 40, 40)
    assert (out.permute(1, 2, 0).int() - resized[10:50, 20:60].int()).abs().max() <= 3


def test_training_loss_is_label_smoothed_cross_entropy():
    cfg = load_config(os.path.join(CLS, "shapes_R_18.yaml"), ["MODEL.CLASSIFIER.LABEL_SMOOTHING", "0.2"])
    model = build_model(cfg).train()
    batch = {"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
             "label": torch.tensor([0, 1, 4, 2])}
    with EventStorage():
        loss = model(batch)["loss_cls"]
    with torch.no_grad():
        log_p = model.eval()(batch).log_softmax(1)
    # (1 - e) * cross-entropy + e * mean over classes of -log p, e = 0.2
    nll = -log_p.gather(1, batch["label"][:, None]).squeeze(1)
    expected = (0.8 * nll + 0.2 * -log_p.mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(loss.item() - nll.mean().item()) > 1e-3  # the smoothing changed the loss
