"""Every shipped config merges and builds (cheap; catches config rot)."""
import glob
import os

import pytest
from detectron2.modeling import build_model

from aw_detection.config import load_config

from .conftest import ROOT

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if os.sep + "studies" + os.sep not in p)  # study specs: tests/test_study.py
_built = {}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_merges_and_builds(path):
    cfg = load_config(path)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.BACKBONE.NAME.startswith("build_aw_")
    # 1x/3x twins share a model: build each distinct MODEL node once.
    key = cfg.MODEL.dump()
    if key not in _built:
        model = build_model(cfg)
        _built[key] = sum(p.numel() for p in model.parameters())
    assert _built[key] > 0
