"""RetinaNet and Mask R-CNN over the attention backbones.

- the RetinaNet FPN builder against Detectron2's, output for output;
- our COCO baselines against Detectron2's model-zoo configs, and every variant = its baseline
  plus only the attention keys its name says;
- Detectron2's own end-to-end and tracing checks (tests/modeling/test_model_e2e.py and
  tests/test_export_torchscript.py in its repository), written again here for detectors with
  attention active (the AW generators' zero-initialised expand layers are randomised);
- the tools on a tiny RetinaNet and a tiny Mask R-CNN.
"""
import copy
import functools
import glob
import json
import logging
import os
import re

import pytest
import torch
import yaml
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.export.flatten import TracingAdapter
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.testing import assert_instances_allclose
from torch import nn

from aw_detection import add_aw_config
from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.config import load_config
from aw_detection.layers import AAConv2d, AWConv2d

from .conftest import ROOT, TINY_OPTS, run_tool, run_tool_here
from .test_backbone import write_c2_r50_pkl

CONFIGS = os.path.join(ROOT, "configs")
RETINANET = "build_aw_retinanet_resnet_fpn_backbone"
DETECTRON2_BUILDERS = {"build_aw_resnet_fpn_backbone": "build_resnet_fpn_backbone",
                       RETINANET: "build_retinanet_resnet_fpn_backbone"}


def fpn_cfg(builder, depth=50, opts=()):
    cfg = add_aw_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = builder
    cfg.MODEL.RESNETS.DEPTH = depth
    retinanet = "retinanet" in builder
    features = ["res3", "res4", "res5"] if retinanet else ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = features
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.merge_from_list(list(opts))
    return cfg


def randomize_norms(module, seed=0):
    """Random FrozenBN statistics and affine parameters (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if ".norm." in name and t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen)
                t.copy_(noise.abs() + 0.5 if name.endswith("running_var") else
                        1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
    return module


# The Faster R-CNN FPN builder and the plain ResNet (RES5_DILATION 2: the DC5 models; an FPN
# refuses a stride-16 res5, test below) are compared the same way in tests/test_backbone.py.
@pytest.mark.parametrize("depth,opts", [(18, []), (50, []), (50, ["MODEL.RESNETS.STRIDE_IN_1X1", False])],
                         ids=["R18", "R50", "R50-stride-in-3x3"])
def test_retinanet_backbone_with_attention_off_is_detectron2s_output_for_output(depth, opts):
    torch.manual_seed(0)
    ref = randomize_norms(build_backbone(fpn_cfg(DETECTRON2_BUILDERS[RETINANET], depth, opts))).eval()
    ours = build_backbone(fpn_cfg(RETINANET, depth, opts)).eval()
    ours.load_state_dict(ref.state_dict())  # strict: the same names and shapes
    assert ours.output_shape() == ref.output_shape()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out, expected = ours(x), ref(x)
    assert list(out) == list(expected) == ["p3", "p4", "p5", "p6", "p7"]
    for k in expected:
        assert expected[k].isfinite().all() and expected[k].std() > 1e-3
        assert torch.equal(out[k], expected[k]), k


def test_fpn_refuses_a_dilated_res5():
    for builder in ("build_aw_resnet_fpn_backbone", RETINANET):
        with pytest.raises(ValueError, match="RES5_DILATION=2 keeps res5 at stride 16"):
            build_backbone(fpn_cfg(builder, 50, ["MODEL.RESNETS.RES5_DILATION", 2]))


def test_retinanet_needs_res5():
    cfg = fpn_cfg(RETINANET, 50, ["MODEL.RESNETS.OUT_FEATURES", ["res3", "res4"]])
    with pytest.raises(ValueError, match="P6 is computed from res5: MODEL.RESNETS.OUT_FEATURES"):
        build_backbone(cfg)


def test_detectron2_retinanet_weights_give_its_output(tmp_path, caplog):
    """A Detectron2 RetinaNet checkpoint (model zoo config, Detectron2's builder) loads into an
    AW RetinaNet with only the attention missing, and the fresh AW model computes exactly
    what Detectron2's computes (neutral init), backbone and head."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    ref = randomize_norms(build_model(cfg)).eval()
    path = str(tmp_path / "retinanet.pth")
    torch.save({"model": ref.state_dict()}, path)
    model = build_model(load_config(f"{CONFIGS}/COCO-Detection/retinanet_R_50_FPN_1x_aw.yaml",
                                    ["MODEL.DEVICE", "cpu"])).eval()
    with caplog.at_level(logging.INFO):
        AWCheckpointer(model).load(path)
    notes = [r.getMessage() for r in caplog.records if "not in the checkpoint" in r.getMessage()
             or "Some model parameters" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("52 attention parameter tensors")  # 13 blocks x 4
    inputs = [{"image": torch.rand(3, 96, 128) * 255}]
    with torch.no_grad():
        outputs = []
        for net in (model, ref):
            features = net.backbone(net.preprocess_image(inputs).tensor)
            logits, deltas = net.head([features[f] for f in net.head_in_features])
            outputs.append([features[f] for f in net.head_in_features] + logits + deltas)
    for ours, expected in zip(*outputs):
        assert torch.equal(ours, expected)


def test_imagenet_pkl_loads_into_the_retinanet_backbone(tmp_path, caplog):
    model = build_backbone(fpn_cfg(RETINANET, 50, ["MODEL.AW.ENABLED", True,
                                                   "MODEL.ACT_ATTENTION.TYPE", "SE"]))
    path = str(tmp_path / "R-50.pkl")
    blobs = write_c2_r50_pkl(path)
    with caplog.at_level(logging.INFO):
        AWCheckpointer(model).load(path)
    state = model.state_dict()
    assert torch.equal(state["bottom_up.res4.2.conv2.weight"], torch.from_numpy(blobs["res4_2_branch2b_w"]))
    assert torch.equal(state["bottom_up.stem.conv1.weight"], torch.from_numpy(blobs["conv1_w"]))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "attention parameter tensors are not in the checkpoint" in messages


# The configs Detectron2's model zoo has (R-101 only at 3x).
MODEL_ZOO = [f"{folder}/{det}_R_{depth}_FPN_{sched}.yaml"
             for folder, det in (("COCO-Detection", "faster_rcnn"), ("COCO-Detection", "retinanet"),
                                 ("COCO-InstanceSegmentation", "mask_rcnn"))
             for depth, sched in ((50, "1x"), (50, "3x"), (101, "3x"))]


@pytest.mark.parametrize("name", MODEL_ZOO)
def test_coco_baselines_are_detectron2_model_zoo_configs(name):
    ours = load_config(f"{CONFIGS}/{name}")
    ref = add_aw_config(get_cfg())
    ref.merge_from_file(model_zoo.get_config_file(name))
    assert ours.MODEL.BACKBONE.NAME == {v: k for k, v in DETECTRON2_BUILDERS.items()}[ref.MODEL.BACKBONE.NAME]
    ref.MODEL.BACKBONE.NAME, ref.MODEL.DEVICE = ours.MODEL.BACKBONE.NAME, ours.MODEL.DEVICE
    assert yaml.safe_load(ours.dump()) == yaml.safe_load(ref.dump())


# What each variant suffix adds to its baseline config, and nothing else.
VARIANT_KEYS = {
    "aw": {"AW.ENABLED": True},
    "aw_lite": {"AW.ENABLED": True, "AW.ATTENTION_GROUPS": 8},
    "se": {"ACT_ATTENTION.TYPE": "SE"},
    "se_aw": {"AW.ENABLED": True, "ACT_ATTENTION.TYPE": "SE"},
    "cbam": {"ACT_ATTENTION.TYPE": "CBAM"},
    "cbam_aw": {"AW.ENABLED": True, "ACT_ATTENTION.TYPE": "CBAM"},
    "aa": {"AA.ENABLED": True},
    "aa_aw": {"AA.ENABLED": True, "AW.ENABLED": True},
}


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("name,builder", [
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", RETINANET),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "build_aw_resnet_fpn_backbone"),
])
def test_a_model_zoo_config_with_only_our_builder_is_detectron2s_model(name, builder):
    """A config that never went through add_aw_config (no MODEL.AW/AA/ACT_ATTENTION) asks for
    no attention: the detector computes what Detectron2's own computes."""
    cfg = model_zoo.get_config(name)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", 128,
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                         "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0])
    torch.manual_seed(0)
    reference = build_model(cfg).eval()
    cfg.MODEL.BACKBONE.NAME = builder
    ours = build_model(cfg).eval()
    ours.load_state_dict(reference.state_dict())  # strict: the same parameters
    image = [{"image": torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255}]
    with torch.no_grad():
        tensor = reference.preprocess_image(image).tensor
        features = reference.backbone(tensor), ours.backbone(tensor)
        expected, got = reference(image)[0]["instances"], ours(image)[0]["instances"]
    assert list(features[0]) == list(features[1])
    for name, value in features[0].items():
        assert value.std() > 1e-3 and torch.equal(value, features[1][name]), name
    assert len(got) == len(expected)  # an untrained R-50 may detect nothing
    if len(expected):
        assert_instances_allclose(got, expected, rtol=0)


def test_every_variant_is_its_baseline_plus_its_attention():
    pattern = re.compile(r"(.*_R_\d+_FPN_\dx)_(" + "|".join(VARIANT_KEYS) + r")\.yaml$")
    checked, bases = 0, {}
    for path in sorted(glob.glob(f"{CONFIGS}/COCO-*/*.yaml")):
        match = pattern.match(path)
        if not match:
            continue
        if match.group(1) not in bases:
            bases[match.group(1)] = _flat(yaml.safe_load(load_config(match.group(1) + ".yaml").dump()))
        base = bases[match.group(1)]
        variant = _flat(yaml.safe_load(load_config(path).dump()))
        diff = {k[len("MODEL."):]: variant[k] for k in variant if variant[k] != base[k]}
        assert diff == VARIANT_KEYS[match.group(2)], path
        checked += 1
    assert checked == 3 * 2 * 2 * len(VARIANT_KEYS)  # detectors x depths x schedules


# ---- Detectron2's end-to-end checks with attention active --------------------------------

DETECTORS = {"faster_rcnn": "COCO-Detection/faster_rcnn_R_50_FPN_1x",
             "mask_rcnn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x",
             "retinanet": "COCO-Detection/retinanet_R_50_FPN_1x"}
# The COCO configs at CPU size: a 64-channel FPN, small heads, 8 classes (D2's tests use class
# ids up to 5), fewer proposals, and one of two backbones (DEPTHS). The attention settings are
# the config's.
CPU_SIZE = [
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 64,
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", 8,
    "MODEL.RETINANET.NUM_CLASSES", 8, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 256, "MODEL.ROI_MASK_HEAD.CONV_DIM", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 200,
]
# Between them these cover every attention layer: AW-lite (8 rows) with SE, AW-full with CBAM,
# AA with AW-full (in res3/res4, and as AA's conv branch in res5). Each is also traced.
E2E_MODELS = [("faster_rcnn", "se_aw"), ("mask_rcnn", "cbam_aw"), ("retinanet", "aa_aw")]
# The end-to-end checks run ResNet-50's bottleneck blocks (those of every COCO config) at a
# quarter of their width. The tracing checks run ResNet-18: in 50 random layers with active
# attention, float rounding alone (eager per-sample vs grouped convolutions, both exact) moves
# boxes by up to ~0.7 px through proposal ranking, too much for a trace-vs-eager comparison.
DEPTHS = {50: ["MODEL.RESNETS.WIDTH_PER_GROUP", 16], 18: ["MODEL.RESNETS.DEPTH", 18]}
VARIANT_OPTS = {("faster_rcnn", "se_aw"): ["MODEL.AW.ATTENTION_GROUPS", 8]}
ATTENTION_SCALE = 0.5


def activate_attention(model, inputs):
    """Random AW generator outputs (the expand layer), each scaled so that max |A| =
    ATTENTION_SCALE on ``inputs`` (layer after layer, as the forward reaches them; without
    normalisation the activations of a random network grow from stage to stage, and a fixed
    scale would give Inf). Returns {layer: max |A|}."""
    seen = {}

    def calibrate(layer, args):
        expand = layer.generator.expand
        with torch.no_grad():
            # A random bias too: the ReLU'd hidden units can all be zero for some inputs.
            nn.init.normal_(expand.weight)
            nn.init.normal_(expand.bias)
            scale = ATTENTION_SCALE / layer.attention(args[0]).abs().max()
            expand.weight.mul_(scale)
            expand.bias.mul_(scale)
            seen[layer] = layer.attention(args[0]).abs().max().item()

    handles = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, AWConv2d)]
    model.eval()
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    return seen


@functools.lru_cache(maxsize=None)
def attention_model(detector, variant, depth=50):
    opts = CPU_SIZE + DEPTHS[depth] + VARIANT_OPTS.get((detector, variant), [])
    cfg = load_config(f"{CONFIGS}/{DETECTORS[detector]}_{variant}.yaml", [str(v) for v in opts])
    torch.manual_seed(43)
    model = build_model(cfg)
    seen = activate_attention(model, [{"image": torch.rand(3, 200, 250) * 255}])
    aw_layers = [m for m in model.modules() if isinstance(m, AWConv2d)]
    assert len(seen) == len(aw_layers) and (bool(aw_layers) == ("aw" in variant))
    assert all(a == pytest.approx(ATTENTION_SCALE) for a in seen.values())
    assert any(isinstance(m, AAConv2d) for m in model.modules()) == variant.startswith("aa")
    return model


def empty_instances(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.rand(0, 4))
    inst.gt_classes = torch.tensor([], dtype=torch.int64)
    inst.gt_masks = BitMasks(torch.rand(0, h, w))
    return inst


def regular_instances(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.rand(3, 4))
    inst.gt_boxes.tensor[:, 2:] += inst.gt_boxes.tensor[:, :2]
    inst.gt_classes = torch.tensor([3, 4, 5])
    inst.gt_masks = BitMasks(torch.rand(3, h, w) > 0.5)
    return inst


def train_step(model, sizes, instances, image=torch.rand):
    model.train()
    with EventStorage():
        losses = model([{"image": image(3, *s), "instances": i} for s, i in zip(sizes, instances)])
        sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)
    return losses


@pytest.mark.parametrize("detector,variant", E2E_MODELS)
def test_empty_data(detector, variant):
    model = attention_model(detector, variant).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 200, 250)}, {"image": torch.rand(3, 200, 249)}])
    assert [r["instances"].image_size for r in out] == [(200, 250), (200, 249)]
    losses = train_step(model, [(200, 250), (200, 249)], [empty_instances(200, 250), empty_instances(200, 249)])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("detector,variant", E2E_MODELS)
def test_half_empty_data(detector, variant):
    model = attention_model(detector, variant)
    losses = train_step(model, [(200, 250), (200, 249)], [empty_instances(200, 250), regular_instances(200, 249)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert ("loss_mask" in losses) == (detector == "mask_rcnn")


def _inf(*shape):
    return 1.0 / torch.zeros(*shape)


def _nan(*shape):
    return torch.full(shape, float("nan"))


@pytest.mark.parametrize("detector,variant", E2E_MODELS)
def test_inf_nan_in_the_heads(detector, variant):
    model = attention_model(detector, variant).eval()
    shapes = model.backbone.output_shape()
    for tensor in (_inf, _nan):
        images = ImageList(tensor(1, 3, 512, 512), [(510, 510)])
        with torch.no_grad():
            if detector == "retinanet":
                features = [tensor(1, shapes[f].channels, 512 // shapes[f].stride, 512 // shapes[f].stride)
                            for f in model.head_in_features]
                logits, deltas = model.head(features)
                predictions = [[tensor(*x.shape) for x in logits], [tensor(*x.shape) for x in deltas]]
                saved, model.test_score_thresh = model.test_score_thresh, -1e9
                try:
                    det = model.forward_inference(images, features, predictions)
                finally:
                    model.test_score_thresh = saved
                if len(det[0]):  # all predictions (if any) are infinite or NaN
                    assert torch.isfinite(det[0].pred_boxes.tensor).sum() == 0
            else:
                features = {f: tensor(1, s.channels, 512 // s.stride, 512 // s.stride)
                            for f, s in shapes.items()}
                # Non-finite RPN outputs give no proposals rather than non-finite boxes.
                rpn_proposals, _ = model.proposal_generator(images, features)
                assert len(rpn_proposals[0]) == 0
                proposals = [Instances((510, 510))]
                proposals[0].proposal_boxes = Boxes([[10, 10, 20, 20]])
                proposals[0].objectness_logits = torch.tensor([1.0]).reshape(1, 1)
                det, _ = model.roi_heads(images, features, proposals)
                assert len(det[0]) == 0


@pytest.mark.parametrize("detector,variant", E2E_MODELS)
def test_diverged_training_raises_floating_point_error(detector, variant):
    """An Inf image makes the attention (and everything after it) non-finite: Detectron2's
    trainer stops with FloatingPointError (the RPN's check, or the loss check for RetinaNet)."""
    model = attention_model(detector, variant)
    batch = [{"image": torch.rand(3, 96, 128), "instances": regular_instances(96, 128)}]
    batch[0]["image"][:, 10, 10] = float("inf")
    trainer = SimpleTrainer(model.train(), iter([batch]), torch.optim.SGD(model.parameters(), lr=0.1))
    weights = copy.deepcopy(model.state_dict())
    with EventStorage(0) as trainer.storage, pytest.raises(FloatingPointError):
        trainer.run_step()
    model.zero_grad(set_to_none=True)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


# ---- tracing (Detectron2's TracingAdapter + torch.jit.trace), attention active -----------

def rcnn_raw(model, image):
    return model.inference([{"image": image}], do_postprocess=False)[0]


def rcnn_postprocessed(model, image):
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    return model.inference(inputs, do_postprocess=True)[0]["instances"]


def retinanet_postprocessed(model, image):
    return model.forward([{"image": image}])[0]["instances"]


def rcnn_batched(model, a, b):
    return model.inference([{"image": a}, {"image": b}], do_postprocess=False)


def retinanet_batched(model, a, b):
    return [r["instances"] for r in model.forward([{"image": a}, {"image": b}])]


# Detectron2's tracing tests: Mask R-CNN with and without post-processing, RetinaNet (with);
# and two images at once, which runs AWConv2d's batch-folded grouped convolution.
TRACED = {("mask_rcnn", "raw"): rcnn_raw, ("mask_rcnn", "postprocessed"): rcnn_postprocessed,
          ("retinanet", "postprocessed"): retinanet_postprocessed,
          ("faster_rcnn", "batched"): rcnn_batched, ("retinanet", "batched"): retinanet_batched}
TRACED_VARIANT = dict(E2E_MODELS)


def _image(h, w, seed):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("detector,mode", sorted(TRACED))
def test_tracing(detector, mode):
    """Trace at one input size, run at another (as Detectron2's test does: half, then full
    size), and get what the model itself returns."""
    model = attention_model(detector, TRACED_VARIANT[detector], depth=18).eval()
    func = TRACED[(detector, mode)]
    if mode == "batched":
        trace_inputs, inputs = (_image(96, 128, 1), _image(112, 144, 2)), (_image(192, 256, 3), _image(160, 224, 4))
    else:
        trace_inputs, inputs = (_image(96, 128, 1),), (_image(192, 256, 3),)
    saved = model.test_score_thresh if detector == "retinanet" else None
    if detector == "retinanet":
        model.test_score_thresh = 0.0  # an untrained RetinaNet scores ~0.01 (prior_prob)
    try:
        wrapper = TracingAdapter(model, trace_inputs, func).eval()
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, trace_inputs, check_trace=False)
            expected = func(model, *inputs)
            got = wrapper.outputs_schema(traced(*inputs))
    finally:
        if detector == "retinanet":
            model.test_score_thresh = saved
    expected, got = (expected, got) if mode == "batched" else ([expected], [got])
    assert len(got) == len(expected) == len(inputs)
    for ours, ref in zip(got, expected):
        assert len(ref) > 0  # something to compare
        if detector == "mask_rcnn":
            assert ours.pred_masks.shape[-2:] == ((28, 28) if mode != "postprocessed" else ref.image_size)
        if detector == "mask_rcnn" and mode == "postprocessed":
            # Pasted masks are thresholded: eager and traced batched runs take different
            # convolution formulations, so a pixel whose mask probability is within rounding
            # of 0.5 may flip.
            flipped = (ours.pred_masks != ref.pred_masks).float().mean().item()
            assert flipped < 1e-4, flipped
            ours.remove("pred_masks"), ref.remove("pred_masks")
        assert_instances_allclose(ref, ours, size_as_tensor=True)


# ---- the tools on a tiny RetinaNet and a tiny Mask R-CNN ---------------------------------

DEMO = os.path.join(CONFIGS, "demo")
TINY_MASK_OPTS = ["MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
                  "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_MASK_HEAD.NORM", "GN"]


def polygon_dataset(json_file, out_file):
    """The shapes annotations with a polygon per box (the shapes data has no masks)."""
    data = json.load(open(json_file))
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    json.dump(data, open(out_file, "w"))
    return out_file


@pytest.fixture(scope="module")
def runs(tiny_shapes, tmp_path_factory):
    """Tiny trained runs (5 iterations): RetinaNet AA+AW (the demo config) and Mask R-CNN
    with AW (the demo Faster R-CNN config with a mask head)."""
    root = tmp_path_factory.mktemp("detector_runs")
    mask_args = []
    for split, (json_file, image_dir) in tiny_shapes["splits"].items():
        masks = polygon_dataset(json_file, str(root / f"{split}_masks.json"))
        mask_args += ["--dataset", f"tiny_{split}={masks}:{image_dir}"]
    out = {"retinanet": str(root / "retinanet"), "mask_rcnn": str(root / "mask_rcnn")}
    run_tool("train_net.py", "--config-file", f"{DEMO}/shapes_retinanet_R_18_FPN_aa_aw.yaml",
             *tiny_shapes["args"], *TINY_OPTS, "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", out["retinanet"])
    run_tool("train_net.py", "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml", *mask_args,
             *TINY_OPTS, *TINY_MASK_OPTS, "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", out["mask_rcnn"])
    return out


def test_train_net_evaluates_boxes_and_masks(runs):
    retinanet = json.load(open(os.path.join(runs["retinanet"], "eval_results.json")))["tiny_val"]
    mask = json.load(open(os.path.join(runs["mask_rcnn"], "eval_results.json")))["tiny_val"]
    assert set(retinanet) == {"bbox"} and set(mask) == {"bbox", "segm"}
    assert 0 <= mask["segm"]["AP"] <= 100


def test_compare_shows_mask_ap_when_present(runs, tmp_path):
    proc = run_tool_here("compare.py", runs["mask_rcnn"], runs["retinanet"], "--output", str(tmp_path))
    header = next([c.strip() for c in line.split("|")] for line in proc.stdout.splitlines()
                  if line.startswith("| run "))
    assert header[header.index("APl") + 1:][:2] == ["mask AP", "mask AP50"]
    mask_ap = json.load(open(os.path.join(runs["mask_rcnn"], "eval_results.json")))["tiny_val"]["segm"]["AP"]
    rows = {r["run"]: r for r in __import__("csv").DictReader(open(tmp_path / "comparison.csv"))}
    assert float(rows["mask_rcnn"]["mask AP"]) == pytest.approx(mask_ap)
    assert rows["retinanet"]["mask AP"] == ""  # RetinaNet has no masks
    assert "box and mask AP" in open(tmp_path / "comparison.md").read()


def test_demo_and_inspection(runs, tiny_shapes, tmp_path):
    images = tiny_shapes["splits"]["val"][1]
    # --confidence must reach RetinaNet's own threshold (RETINANET.SCORE_THRESH_TEST): a
    # second run at the first run's median score keeps only the detections above it.
    def demo(name, confidence):
        out = str(tmp_path / f"demo_{name}_{confidence}")
        run_tool_here("demo.py", "--run", runs[name], "--input", images, "--output", out,
                      "--confidence", str(confidence))
        results = json.load(open(os.path.join(out, "detections.json")))
        assert len(results) == 6 and all(os.path.exists(os.path.join(out, r["output"])) for r in results)
        return sorted(d["score"] for r in results for d in r["detections"]), results

    scores, _ = demo("retinanet", 0.05)
    median = scores[len(scores) // 2]
    assert len(scores) > 1 and median > scores[0]
    above, _ = demo("retinanet", median)
    assert above and len(above) < len(scores)
    assert all(s >= median - 1e-4 for s in above)  # scores are listed rounded to 4 digits
    _, results = demo("mask_rcnn", 0.0)
    assert all(r["detections"] for r in results)
    for name in ("retinanet", "mask_rcnn"):
        out = str(tmp_path / f"inspect_{name}")
        run_tool_here("inspect_attention.py", "--run", runs[name], "--input", images, "--output",
                      out, "--max-images", "2")
        stats = json.load(open(os.path.join(out, "attention_stats.json")))
        assert len(stats) == 12  # R-18 res3-res5: 6 blocks x 2 AW convs (in res5 AA's branches)


def test_benchmark_trains_retinanet_and_mask_rcnn(tmp_path):
    out = str(tmp_path / "bench.json")
    run_tool_here("benchmark.py", "--task", "train",
                  "--config-file", f"{DEMO}/shapes_retinanet_R_18_FPN.yaml",
                  "--config-file", f"{DEMO}/shapes_R_18_FPN.yaml", "--iters", "1", "--batch-size", "2",
                  "--no-memory", "--output", out, "INPUT.MIN_SIZE_TRAIN", "(96,)",
                  "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST",
                  "128", *TINY_MASK_OPTS)
    rows = json.load(open(out))
    assert [r["config"] for r in rows] == ["shapes_retinanet_R_18_FPN", "shapes_R_18_FPN"]
    assert all(r["seconds_per_iter"] > 0 for r in rows)


def test_analyze_model_counts_heads_by_hand(tmp_path):
    """fvcore's count of the heads against a hand count (R-18 bodies, COCO heads, 128x160)."""
    out = str(tmp_path / "stats.json")
    run_tool_here("analyze_model.py",
                  "--config-file", f"{CONFIGS}/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
                  "--config-file", f"{CONFIGS}/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_aw.yaml",
                  "--config-file", f"{CONFIGS}/COCO-Detection/retinanet_R_50_FPN_1x_aa_aw.yaml",
                  "--height", "128", "--width", "160", "--output", out, "MODEL.DEVICE", "cpu",
                  "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")
    faster, mask, retinanet = json.load(open(out))
    # Mask R-CNN: 100 detections (TEST.DETECTIONS_PER_IMAGE) through the mask head, each
    # 4 3x3 convs 256->256 on 14x14, a 2x2 deconv to 28x28 and a 1x1 conv to 80 classes.
    per_detection = 4 * 256 * 256 * 9 * 14 * 14 + 256 * 256 * 4 * 14 * 14 + 256 * 80 * 28 * 28
    mask_head = mask["gflops"] - mask["backbone_gflops"] - (faster["gflops"] - faster["backbone_gflops"])
    assert mask_head == pytest.approx(100 * per_detection / 1e9, rel=1e-3)
    # RetinaNet: two subnets of 4 3x3 convs 256->256, then the 3x3 class (9 anchors x 80)
    # and box (9 x 4) convs, at every position of P3-P7 (16x20, 8x10, 4x5, 2x3, 1x2).
    positions = 16 * 20 + 8 * 10 + 4 * 5 + 2 * 3 + 1 * 2
    per_position = 2 * 4 * 256 * 256 * 9 + 256 * 9 * 80 * 9 + 256 * 9 * 4 * 9
    head = retinanet["gflops"] - retinanet["backbone_gflops"]
    assert head == pytest.approx(positions * per_position / 1e9, rel=1e-3)
