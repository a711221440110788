"""Attention backbones: Detectron2 naming, exact baseline equivalence, weights, counts."""
import logging
import os
import pickle

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

from aw_detection import add_aw_config
from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.config import load_config
from aw_detection.errors import ConfigError
from aw_detection.layers import CBAM, AAConv2d, AWConv2d, SqueezeExcitation
from aw_detection.modeling.backbone import AttentionBasicBlock, AttentionBottleneckBlock

from .conftest import ROOT


def make_cfg(depth=50, aw=False, act="", attention_groups=0, **extra):
    cfg = add_aw_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_aw_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.AW.ENABLED = aw
    cfg.MODEL.AW.ATTENTION_GROUPS = attention_groups
    cfg.MODEL.ACT_ATTENTION.TYPE = act
    for key, value in extra.items():
        cfg.merge_from_list([key, value])
    return cfg


def randomise(module, seed=0):
    """Random weights that keep activations in range: He-scaled convs, norms near identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=gen) * (2 / t[0].numel()) ** 0.5)
            elif name.endswith(("weight", "running_var")):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.75)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    return module


def backbone(cfg):
    return build_backbone(cfg, ShapeSpec(channels=3))


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("depth,fpn,options", [
    (18, True, {}), (50, True, {}), (50, True, {"MODEL.RESNETS.STRIDE_IN_1X1": False}),
    # FPN needs log2-contiguous strides, so a dilated res5 is a plain-ResNet (C4/DC5) setting.
    (50, False, {"MODEL.RESNETS.RES5_DILATION": 2, "MODEL.RESNETS.NORM": "GN"}),
])
def test_attention_off_is_detectron2_builder_output_for_output(depth, fpn, options):
    cfg = make_cfg(depth, **options)
    name = "resnet_fpn" if fpn else "resnet"
    cfg.MODEL.BACKBONE.NAME = f"build_aw_{name}_backbone"
    ours = backbone(cfg).eval()
    cfg.MODEL.BACKBONE.NAME = f"build_{name}_backbone"
    theirs = backbone(cfg).eval()
    assert shapes(ours) == shapes(theirs)
    randomise(theirs)  # FrozenBN statistics included
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert list(got) == list(expected)
    for k in expected:
        assert expected[k].isfinite().all() and expected[k].std() > 1e-3
        assert torch.equal(got[k], expected[k]), k


CONFIG_ERRORS = [
    ({"MODEL.AW.ENABLED": True, "MODEL.AW.STAGES": ["res6"]}, "MODEL.AW.STAGES: unknown stage 'res6'"),
    ({"MODEL.AA.ENABLED": True, "MODEL.AA.STAGES": ["res2"]}, "MODEL.AA.STAGES has res2, but MODEL.BACKBONE.FREEZE_AT=2 freezes it"),
    ({"MODEL.ACT_ATTENTION.TYPE": "ECA"}, 'TYPE must be "", "SE" or "CBAM", got "ECA"'),
    ({"MODEL.RESNETS.DEPTH": 42}, r"MODEL.RESNETS.DEPTH must be one of \[18, 34, 50, 101, 152\], got 42"),
    ({"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 256}, "R18/R34 need RESNETS.RES2_OUT_CHANNELS=64"),
    ({"MODEL.RESNETS.RES5_DILATION": 3}, "RES5_DILATION must be 1 or 2, got 3"),
    ({"MODEL.AW.ENABLED": True, "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, True, False]},
     "res4: deformable conv and attention cannot share a stage"),
    ({"MODEL.AW.ENABLED": True, "MODEL.AW.KERNEL": "cuda"},
     r"MODEL.AW.KERNEL: unknown kernel 'cuda'; use one of \('auto', 'cudnn', 'triton'\)"),
    ({"MODEL.AW.ENABLED": True, "MODEL.AW.ATTENTION_GROUPS": 3}, "res3: AWConv2d: attention_groups must divide out_channels=128.*check MODEL.AW"),
    ({"MODEL.AA.ENABLED": True, "MODEL.RESNETS.NUM_GROUPS": 32, "MODEL.RESNETS.WIDTH_PER_GROUP": 8},
     r"MODEL.AA: grouped 3x3 convs \(RESNETS.NUM_GROUPS > 1\) are not supported"),
    ({"MODEL.AA.ENABLED": True, "MODEL.AA.NU": 1.0}, "res5: AAConv2d: value_channels=512 must be < out_channels=512"),
]


@pytest.mark.parametrize("options,message", CONFIG_ERRORS, ids=[m[:30] for _, m in CONFIG_ERRORS])
def test_config_mistakes_are_config_errors(options, message):
    depth = options.get("MODEL.RESNETS.DEPTH", 50)
    cfg = make_cfg(50 if depth == 42 else depth,
                   **{k: v for k, v in options.items() if k != "MODEL.RESNETS.DEPTH"})
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth == 18:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = options["MODEL.RESNETS.RES2_OUT_CHANNELS"]
    with pytest.raises(ConfigError, match=message):
        backbone(cfg)


@pytest.mark.parametrize("depth,aw,act", [(50, True, ""), (50, True, "SE"), (18, True, "CBAM"),
                                          (50, False, "CBAM")])
def test_attention_only_adds_parameters(depth, aw, act):
    base = shapes(backbone(make_cfg(depth)))
    variant = shapes(backbone(make_cfg(depth, aw=aw, act=act)))
    added = {k for k in variant if k not in base}
    assert {k: variant[k] for k in base} == base
    assert added and all(".generator." in k or ".act_attention." in k for k in added)
    assert not any(k.startswith(("res2.", "bottom_up.res2.")) for k in added)


def test_blocks_follow_config():
    net = backbone(make_cfg(50, aw=True, act="SE", **{"MODEL.AW.STAGES": ["res4"]})).bottom_up
    assert all(isinstance(b, AttentionBottleneckBlock) for b in net.res3)
    assert isinstance(net.res4[0].conv2, AWConv2d) and not isinstance(net.res3[0].conv2, AWConv2d)
    assert isinstance(net.res3[0].act_attention, SqueezeExcitation)
    # STRIDE_IN_1X1 defaults to True (MSRA weights): the stride stays on conv1.
    assert net.res4[0].conv2.norm is not None and net.res4[0].conv1.stride == (2, 2)
    r18 = backbone(make_cfg(18, aw=True, act="CBAM")).bottom_up
    block = r18.res5[0]
    assert isinstance(block, AttentionBasicBlock) and isinstance(block.act_attention, CBAM)
    assert isinstance(block.conv1, AWConv2d) and isinstance(block.conv2, AWConv2d)


def test_options_are_respected():
    cfg = make_cfg(50, aw=True, **{"MODEL.RESNETS.STRIDE_IN_1X1": False,
                                    "MODEL.RESNETS.RES5_DILATION": 2, "MODEL.RESNETS.NORM": "GN",
                                    "MODEL.BACKBONE.NAME": "build_aw_resnet_backbone"})
    net = backbone(cfg)
    conv = net.res5[0].conv2
    assert conv.stride == (1, 1) and conv.dilation == (2, 2) and conv.padding == (2, 2)
    assert type(conv.norm).__name__ == "GroupNorm"
    assert net.res4[0].conv2.stride == (2, 2) and net.res4[0].conv1.stride == (1, 1)
    frozen = backbone(make_cfg(50, aw=True)).bottom_up  # FREEZE_AT=2 by default
    assert not any(p.requires_grad for p in frozen.res2.parameters())
    assert all(p.requires_grad for p in frozen.res3.parameters())


def test_attention_in_a_frozen_stage_is_an_error():
    with pytest.raises(ValueError, match="FREEZE_AT=2 freezes it"):
        backbone(make_cfg(50, aw=True, **{"MODEL.AW.STAGES": ["res2", "res3"]}))
    with pytest.raises(ValueError, match='"SE" or "CBAM", got "ECA"'):
        backbone(make_cfg(50, act="ECA"))


def test_extra_parameters_match_hand_count_for_one_block():
    def block_params(**kw):
        net = backbone(make_cfg(50, **kw)).bottom_up
        return sum(p.numel() for p in net.res3[1].parameters())

    base = block_params()
    c_mid, c_out = 128, 512  # res3 bottleneck width and output channels
    hidden = max(c_mid // 16, 8)
    aw_full = (c_mid * hidden + hidden) + (hidden * c_mid * c_mid + c_mid * c_mid)
    aw_lite = (c_mid * hidden + hidden) + (hidden * 8 * c_mid + 8 * c_mid)
    se = (c_out * 32 + 32) + (32 * c_out + c_out)
    cbam = 2 * c_out * 32 + 2 * 49
    assert block_params(aw=True) - base == aw_full
    assert block_params(aw=True, attention_groups=8) - base == aw_lite
    assert block_params(act="SE") - base == se
    assert block_params(act="CBAM") - base == cbam
    assert block_params(aw=True, act="SE") - base == aw_full + se


def test_faster_rcnn_r50_fpn_parameter_count():
    cfg = load_config(os.path.join(ROOT, "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    assert sum(p.numel() for p in model.parameters()) == 41_699_936  # Detectron2's figure


def test_baseline_weights_give_the_baseline_output(tmp_path, caplog):
    torch.manual_seed(0)
    base = backbone(make_cfg(50)).eval()
    path = str(tmp_path / "baseline.pth")
    torch.save({"model": base.state_dict()}, path)
    model = backbone(make_cfg(50, aw=True)).eval()
    with caplog.at_level(logging.INFO):
        AWCheckpointer(model).load(path)
    notes = [r.getMessage() for r in caplog.records if "not in the checkpoint" in r.getMessage()
             or "Some model parameters" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("52 attention parameter tensors")  # 13 blocks x 4
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours, ref = model(x[:1]), base(x[:1])
        assert all(torch.equal(ours[k], ref[k]) for k in ref)
        ours, ref = model(x), base(x)
        for k in ref:
            torch.testing.assert_close(ours[k], ref[k], atol=1e-4, rtol=1e-4)


def _c2_name(name):
    """Detectron2 ResNet parameter name -> Caffe2 (R-50.pkl) blob name."""
    parts = name.split(".")
    suffix = {"weight": "w"} if parts[-2].startswith(("conv", "shortcut")) else {"weight": "s", "bias": "b"}
    if parts[0] == "stem":
        return "conv1_w" if parts[-2] == "conv1" else f"res_conv1_bn_{suffix[parts[-1]]}"
    stage, index, layer = parts[0], parts[1], parts[2]
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[layer]
    bn = "_bn" if parts[-2] == "norm" else ""
    return f"{stage}_{index}_{branch}{bn}_{suffix[parts[-1]]}"


def write_c2_r50_pkl(path):
    """A random R-50 ImageNet checkpoint in Detectron2's Caffe2 format; returns its blobs."""
    plain = backbone(make_cfg(50, **{"MODEL.BACKBONE.NAME": "build_aw_resnet_backbone"}))
    blobs = {_c2_name(k): torch.randn(v.shape).numpy() for k, v in plain.state_dict().items()
             if not k.endswith(("running_mean", "running_var"))}  # FrozenBN in R-50.pkl: s, b
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    return blobs


def test_c2_imagenet_pkl_loads_into_every_variant(tmp_path, caplog):
    cfg = make_cfg(50, aw=True, act="SE")
    cfg.MODEL.BACKBONE.NAME = "build_aw_resnet_backbone"
    model = backbone(cfg)
    path = str(tmp_path / "R-50.pkl")
    blobs = write_c2_r50_pkl(path)
    with caplog.at_level(logging.INFO):
        AWCheckpointer(model).load(path)
    state = model.state_dict()
    assert torch.equal(state["res4.2.conv2.weight"], torch.from_numpy(blobs["res4_2_branch2b_w"]))
    assert torch.equal(state["stem.conv1.norm.weight"], torch.from_numpy(blobs["res_conv1_bn_s"]))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "Some model parameters or buffers are not found" not in messages
    assert "attention parameter tensors are not in the checkpoint" in messages


def test_aa_blocks_and_baseline_weights(tmp_path, caplog):
    cfg = make_cfg(50, aw=True, **{"MODEL.AA.ENABLED": True, "MODEL.AA.MAX_SIZE": 16})
    model = backbone(cfg).eval()
    conv = model.bottom_up.res5[0].conv2
    assert isinstance(conv, AAConv2d) and isinstance(conv.conv, AWConv2d)
    assert isinstance(model.bottom_up.res4[0].conv2, AWConv2d)  # AW alone outside AA.STAGES
    base = backbone(make_cfg(50))
    path = str(tmp_path / "baseline.pth")
    torch.save({"model": base.state_dict()}, path)
    with caplog.at_level(logging.INFO):
        AWCheckpointer(model).load(path)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "AA: 3 plain convs loaded" in messages
    assert "Some model parameters" not in messages and "incompatible shapes" not in messages
    n = conv.conv.out_channels
    assert torch.equal(conv.conv.weight, base.bottom_up.res5[0].conv2.weight[:n])
    assert torch.equal(conv.norm.weight, base.bottom_up.res5[0].conv2.norm.weight)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160))
    assert out["p5"].shape == (1, 256, 4, 5)


def test_c2_pkl_loads_into_aa(tmp_path, caplog):
    cfg = make_cfg(50, **{"MODEL.AA.ENABLED": True, "MODEL.BACKBONE.NAME": "build_aw_resnet_backbone"})
    model = backbone(cfg)
    path = str(tmp_path / "R-50.pkl")
    blobs = write_c2_r50_pkl(path)
    with caplog.at_level(logging.INFO):
        AWCheckpointer(model).load(path)
    n = model.res5[1].conv2.conv.out_channels
    assert torch.equal(model.res5[1].conv2.conv.weight, torch.from_numpy(blobs["res5_1_branch2b_w"][:n]))
    assert "Some model parameters" not in " ".join(r.getMessage() for r in caplog.records)
