"""Every shipped YAML config merges, builds, and holds exactly the attention its name promises."""
import glob
import os
import re

import pytest
import torch
from detectron2.modeling import build_model

from aw_detection.config import load_config
from aw_detection.layers import CBAM, AAConv2d, AWConv2d, SqueezeExcitation

from .conftest import ROOT

# Base-*.yaml hold shared settings, each built through the configs that include it; study
# specs are not configs (tests/test_study.py).
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("Base-") and os.sep + "studies" + os.sep not in p)
BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
_built = {}


def _promised(name, depth):
    """Layer counts a config name promises: AW (any G) on every 3x3 conv of res3-res5, AA on
    those of res5, SE/CBAM on every block of res3-res5 (one 3x3 per bottleneck, two per basic
    block)."""
    tokens = set(re.sub(r"^.*?_R_\d+(_FPN|_C4)?(_[13]x)?", "", name).strip("_").replace("aw_lite", "awlite").split("_")) - {""}
    assert tokens <= {"aw", "awlite", "se", "cbam", "aa"}, f"unknown variant in {name}: {tokens}"
    blocks = BLOCKS[depth]
    convs = 2 if depth in (18, 34) else 1
    res3_5, res5 = sum(blocks[1:]) * convs, blocks[3] * convs
    return {
        AWConv2d: res3_5 if tokens & {"aw", "awlite"} else 0,
        AAConv2d: res5 if "aa" in tokens else 0,
        SqueezeExcitation: sum(blocks[1:]) if "se" in tokens else 0,
        CBAM: sum(blocks[1:]) if "cbam" in tokens else 0,
    }, "awlite" in tokens


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds_the_attention_its_name_promises(path):
    name = os.path.splitext(os.path.basename(path))[0]
    cfg = load_config(path)
    cfg.MODEL.DEVICE = "meta"
    assert cfg.MODEL.BACKBONE.NAME.startswith("build_aw_")
    promised, lite = _promised(name, cfg.MODEL.RESNETS.DEPTH)
    key = cfg.MODEL.dump()  # 1x/3x twins share a model: build each distinct one once
    if key not in _built:
        with torch.device("meta"):  # the real modules, without memory or initialisation
            modules = list(build_model(cfg).modules())
        counts = {kind: sum(isinstance(m, kind) for m in modules) for kind in promised}
        shared_rows = all(m.attention_groups < m.out_channels for m in modules
                          if isinstance(m, AWConv2d))
        _built[key] = counts, shared_rows
    counts, shared_rows = _built[key]
    assert counts == promised
    if lite:
        assert shared_rows
