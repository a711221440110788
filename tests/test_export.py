"""Export: TorchScript and ONNX files against the eager detector, on real-looking images at sizes
other than the traced one, with the attention made non-zero; batches, refusals, the CLI, and
running the files in a process that cannot import Detectron2 or this package."""
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.export.flatten import flatten_to_tuple
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import Boxes, Instances

from aw_detection.config import load_config
from aw_detection.data import read_image
from aw_detection.errors import UserError
from aw_detection.experiments.benchmark import export_benchmark
from aw_detection.export import (ExportError, compare_outputs, export, export_model, image_tensor,
                                 load_exported, output_names, traceable_model)
from aw_detection.layers import AWConv2d

from .conftest import ROOT, run_tool_here

DEMO = os.path.join(ROOT, "configs", "demo")
# Traced at 112 px (a random sample), checked on shapes images at 128 and 96 px.
SMALL = ["INPUT.MIN_SIZE_TEST", "112", "INPUT.MAX_SIZE_TEST", "160",
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
VARIANTS = {  # name: (demo config, overrides)
    "baseline": ("shapes_R_18_FPN", []),
    "aw_full": ("shapes_R_18_FPN_aw", ["MODEL.AW.ATTENTION_GROUPS", "0"]),
    "aw_lite": ("shapes_R_18_FPN_aw", []),
    "se": ("shapes_R_18_FPN_se", []),
    "se_aw": ("shapes_R_18_FPN_se_aw", []),
    "cbam": ("shapes_R_18_FPN_cbam", []),
    "cbam_aw": ("shapes_R_18_FPN_cbam_aw", []),
    "aa": ("shapes_R_18_FPN_aa", []),
    "aa_aw": ("shapes_R_18_FPN_aa_aw", []),
}


def _config(variant, *opts):
    config, variant_opts = VARIANTS[variant]
    return load_config(os.path.join(DEMO, f"{config}.yaml"), [*SMALL, *variant_opts, *opts])


def _randomise(model, seed=0):
    """Non-zero attention (a fresh AW generator is zero: parity would prove nothing) and, for
    RetinaNet, class scores that are not all tied at the prior."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AWConv2d):
                for p in module.generator.expand.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        if not isinstance(model, GeneralizedRCNN):  # logits with a spread of ~2 around -2
            model.head.cls_score.weight.copy_(
                torch.randn(model.head.cls_score.weight.shape, generator=gen) * 0.1)
            model.head.cls_score.bias.fill_(-2.0)
    return model


def _model(variant, *opts):
    torch.manual_seed(0)
    return _randomise(build_model(_config(variant, *opts)).eval())


def _eager(model, images):
    """The eager model's outputs, flattened by Detectron2 (the reference the files must match)."""
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):
            instances = model.inference([{"image": x} for x in images], do_postprocess=False)
            outputs = [{"instances": i} for i in instances]
        else:
            outputs = model([{"image": x} for x in images])
    return flatten_to_tuple(outputs)


@pytest.fixture(scope="module")
def shapes_images(tiny_shapes):
    """Shapes val images as model inputs at two sizes: {short side: [tensor, ...]}."""
    _, image_dir = tiny_shapes["splits"]["val"]
    paths = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir))[:3]
    sizes = {}
    for short in (128, 96):
        cfg = _config("baseline", "INPUT.MIN_SIZE_TEST", str(short), "INPUT.MAX_SIZE_TEST", "200")
        sizes[short] = [image_tensor(cfg, read_image(p, "BGR")) for p in paths]
    return sizes


def _assert_parity(model, run, image_sets, min_detections=10):
    for images in image_sets:
        reference, schema = _eager(model, images)
        exported = run(*images)
        stats = compare_outputs(schema, reference, exported)
        assert stats["unmatched"] == 0, (stats, [x.shape for x in images])
        assert stats["detections"] >= min_detections * len(images)
        # Independent of the matching: the sorted scores agree.
        for name, ref, out in zip(output_names(schema), reference, exported):
            if name.startswith("scores"):
                torch.testing.assert_close(out.sort().values, ref.sort().values,
                                           atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_file_matches_eager_at_other_sizes(variant, fmt, shapes_images, tmp_path):
    model = _model(variant)
    cfg = _config(variant)
    sample = [torch.rand(3, 112, 149, generator=torch.Generator().manual_seed(1)) * 255]
    path = export_model(traceable_model(model, sample), sample, fmt, str(tmp_path))
    run = load_exported(path)
    _assert_parity(model, run, [shapes_images[128][:1], shapes_images[96][1:2]])
    with pytest.raises(Exception):  # a batched (1, 3, H, W) tensor is not one image
        run(sample[0][None])
    if cfg.MODEL.AW.ENABLED:  # the attention matters: without it the outputs differ
        plain = _model(variant)
        for module in plain.modules():
            if isinstance(module, AWConv2d):
                torch.nn.init.zeros_(module.generator.expand.weight)
                torch.nn.init.zeros_(module.generator.expand.bias)
        image = shapes_images[128][0]
        assert not torch.allclose(_eager(plain, [image])[0][2], run(image)[2])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("detector,config,opts", [
    ("mask_rcnn", "shapes_R_18_FPN_aw", ["MODEL.MASK_ON", "True"]),
    ("retinanet", "shapes_retinanet_R_18_FPN_aa_aw", []),  # the P3-P7 RetinaNet backbone
])
def test_mask_rcnn_and_retinanet(detector, config, opts, fmt, shapes_images, tmp_path):
    torch.manual_seed(0)
    model = _randomise(build_model(load_config(os.path.join(DEMO, f"{config}.yaml"),
                                               [*SMALL, *opts])).eval())
    sample = [torch.rand(3, 112, 149, generator=torch.Generator().manual_seed(1)) * 255]
    adapter = traceable_model(model, sample)
    names = output_names(adapter.outputs_schema)
    assert ("pred_masks" in names) == (detector == "mask_rcnn")
    run = load_exported(export_model(adapter, sample, fmt, str(tmp_path)))
    _assert_parity(model, run, [shapes_images[128][:1], shapes_images[96][1:2]])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_batch_of_two_is_fixed_and_exact(fmt, shapes_images, tmp_path):
    """A file exported for 2 images runs any two sizes exactly and refuses 1 or 3 images."""
    model = _model("aw_full")
    sample = [torch.rand(3, 112, 149, generator=torch.Generator().manual_seed(i)) * 255
              for i in (1, 2)]
    path = export_model(traceable_model(model, sample), sample, fmt, str(tmp_path))
    run = load_exported(path)
    a, b = shapes_images[128][0], shapes_images[96][1]
    _assert_parity(model, run, [[a, b], [b, shapes_images[128][2]]])
    for wrong in ([a], [a, b, a]):  # the file itself refuses (not load_exported's wrapper)
        with pytest.raises(Exception, match="argument|[Ii]nput"):
            if fmt == "onnx":
                import onnxruntime

                onnxruntime.InferenceSession(path).run(
                    None, {f"image_{i}": x.numpy() for i, x in enumerate(wrong)})
            else:
                torch.jit.load(path)(*wrong)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_aa_map_beyond_its_tables_is_refused(fmt, tmp_path):
    """Eager AA refuses maps larger than MODEL.AA.MAX_SIZE; the exported file must refuse too
    (the check itself is Python, so the trace keeps only the shape arithmetic)."""
    model = _model("aa", "MODEL.AA.MAX_SIZE", "8")
    sample = [torch.rand(3, 112, 149) * 255]
    run = load_exported(export_model(traceable_model(model, sample), sample, fmt, str(tmp_path)))
    large = torch.rand(3, 320, 448) * 255  # res5 10 x 14 > 8
    with pytest.raises(ValueError, match="exceeds max_size"):
        _eager(model, [large])
    with pytest.raises(Exception):
        run(large)


def test_compare_outputs_pairs_tied_detections_and_flags_differences():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4.0]])
    classes, scores = torch.tensor([0, 1, 2]), torch.tensor([0.9, 0.5, 0.5])
    size = torch.tensor([64, 64])
    _, schema = flatten_to_tuple([{"instances": Instances(
        (64, 64), pred_boxes=Boxes(boxes), pred_classes=classes, scores=scores)}])
    reference = (boxes, classes, scores, size)
    swapped = (boxes[[0, 2, 1]], classes[[0, 2, 1]], scores[[0, 2, 1]], size)
    assert compare_outputs(schema, reference, swapped)["unmatched"] == 0
    moved = boxes.clone()
    moved[1, 0] += 0.5
    assert compare_outputs(schema, reference, (moved, classes, scores, size))["unmatched"] == 1
    assert compare_outputs(schema, reference, (boxes, classes.flip(0), scores, size))["unmatched"] == 1
    assert compare_outputs(schema, reference, (boxes[:2], classes[:2], scores[:2], size))["unmatched"] == 1
    assert compare_outputs(schema, reference, (boxes, classes, scores + 1e-3, size))["unmatched"] == 1


def test_export_refuses_a_file_that_differs_from_eager(tmp_path):
    """The verification step: a file that no longer computes what the model computes is
    deleted and the export refused."""
    from aw_detection.export import verify_export

    model = _model("aw_lite")
    sample = [torch.rand(3, 112, 149) * 255]
    adapter = traceable_model(model, sample)
    path = export_model(adapter, sample, "torchscript", str(tmp_path))
    assert verify_export(adapter, path, [sample])["detections"] > 0
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] += 1.0
    with pytest.raises(ExportError, match="does not match the eager model"):
        verify_export(adapter, path, [sample])
    assert not os.path.exists(path)


def _write_run(run_dir, variant):
    """A self-describing run directory: config.yaml (with its classes) + model_final.pth."""
    cfg = _config(variant, "MODEL.CLASS_NAMES", '["circle", "rectangle", "triangle", "star", "cross"]',
                  "MODEL.CATEGORY_IDS", "[1, 2, 3, 4, 7]")
    model = _model(variant)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    torch.save({"model": model.state_dict()}, os.path.join(run_dir, "model_final.pth"))
    return model


CLEAN_RUNNER = """
import importlib.util, sys
sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + [{site!r}]
assert importlib.util.find_spec('detectron2') is None and importlib.util.find_spec('aw_detection') is None
import torch, torchvision, numpy, onnxruntime
images = torch.load({images!r})
ts = torch.jit.load({ts!r})
with torch.no_grad():
    torchscript = [tuple(ts(x)) for x in images]
session = onnxruntime.InferenceSession({onnx!r})
onnx = [tuple(torch.from_numpy(o) for o in session.run(None, {{'image': x.numpy()}})) for x in images]
assert 'detectron2' not in sys.modules and 'aw_detection' not in sys.modules
torch.save({{'torchscript': torchscript, 'onnx': onnx}}, {result!r})
"""


def test_cli_exports_a_trained_run_that_runs_without_this_package(shapes_images, tmp_path):
    run_dir = str(tmp_path / "run")
    model = _write_run(run_dir, "aa_aw")
    image = shapes_images[128][0]
    sample = str(tmp_path / "sample.png")
    import cv2

    cv2.imwrite(sample, image.permute(1, 2, 0).numpy().astype(np.uint8))
    for fmt in ("torchscript", "onnx"):
        proc = run_tool_here("export_model.py", "--run", run_dir, "--format", fmt,
                             "--export-method", "tracing", "--sample-image", sample,
                             "--output", str(tmp_path / fmt))
        assert "verified against the eager model" in proc.stdout
        info = json.load(open(tmp_path / fmt / "deploy.json"))
        assert info["class_names"][4] == "cross" and info["category_ids"][4] == 7
        assert info["inputs"] == [{"name": "image", "shape": [3, "H", "W"], "dtype": "float32"}]
        assert [o["name"] for o in info["outputs"]] == ["pred_boxes", "pred_classes", "scores",
                                                        "image_size"]
        assert info["input_format"] == "BGR" and info["max_image_side"] == 128 * 32
        assert info["verification"]["detections"] > 0
    assert os.path.getsize(tmp_path / "torchscript" / "model_ts_IR.txt") > 0

    images = [shapes_images[96][1], shapes_images[128][2]]  # sizes the trace never saw
    torch.save(images, tmp_path / "images.pt")
    site = sysconfig.get_paths()["purelib"]
    code = CLEAN_RUNNER.format(site=site, images=str(tmp_path / "images.pt"),
                               ts=str(tmp_path / "torchscript" / "model.ts"),
                               onnx=str(tmp_path / "onnx" / "model.onnx"),
                               result=str(tmp_path / "result.pt"))
    # -I -S: no PYTHONPATH, no .pth files (Detectron2 and the editable install come from them).
    subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True, cwd=str(tmp_path),
                   timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "")})
    result = torch.load(tmp_path / "result.pt")
    for fmt in ("torchscript", "onnx"):
        for image, outputs in zip(images, result[fmt]):
            reference, schema = _eager(model, [image])
            stats = compare_outputs(schema, reference, outputs)
            assert stats["unmatched"] == 0 and stats["detections"] > 10, (fmt, stats)


def test_cli_errors_are_clear(tmp_path):
    proc = run_tool_here("export_model.py", "--config-file", os.path.join(DEMO, "shapes_R_18_FPN.yaml"),
                         "--format", "onnx", "--output", str(tmp_path), check=False)
    assert proc.returncode == 2 and "error: set MODEL.WEIGHTS" in proc.stderr
    assert "Traceback" not in proc.stderr
    model = build_model(_config("baseline", "MODEL.META_ARCHITECTURE", "ProposalNetwork"))
    cfg = _config("baseline")
    meta = Metadata(thing_classes=list("abcde"), category_ids=[1, 2, 3, 4, 5])
    with pytest.raises(UserError, match="GeneralizedRCNN and dense detectors"):
        export(cfg, model, "torchscript", str(tmp_path), meta)
    with pytest.raises(UserError, match="--batch must be >= 1"):
        export(cfg, model, "torchscript", str(tmp_path), meta, batch=0)


def test_export_benchmark_rows(monkeypatch):
    """Eager, TorchScript and onnxruntime rows, timed interleaved with the requested clock."""
    from aw_detection.experiments import benchmark

    timed, real = [], benchmark.time_interleaved

    def recorded(steps, *args, **kwargs):  # the real timing, its arguments kept
        timed.append((sorted(steps), kwargs))
        return real(steps, *args, **kwargs)

    monkeypatch.setattr(benchmark, "time_interleaved", recorded)
    cfg = _config("aw_lite", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96")
    rows = export_benchmark([("aw_lite", cfg)], iters=1, warmup=0, clock="cpu")
    assert [r["runtime"] for r in rows] == ["eager", "torchscript", "onnxruntime"]
    assert all(r["seconds_per_image"] > 0 and r["input"] == [64, 85] for r in rows)
    assert timed == [([("aw_lite", "eager"), ("aw_lite", "onnxruntime"), ("aw_lite", "torchscript")],
                      {"device": "cpu", "clock": "cpu"})]
