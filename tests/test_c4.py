"""C4 detectors: res5 (in the ROI head) takes the configured attention, or the build refuses."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from aw_detection.config import load_config
from aw_detection.errors import ConfigError
from aw_detection.experiments.benchmark import synthetic_batch
from aw_detection.layers import AWConv2d, SqueezeExcitation

from .conftest import ROOT

C4 = os.path.join(ROOT, "configs", "COCO-Detection", "faster_rcnn_R_50_C4_1x")
D2_C4 = os.path.join(os.path.dirname(__import__("detectron2").__file__), "model_zoo", "configs",
                     "COCO-Detection", "faster_rcnn_R_50_C4_1x.yaml")
# A narrow R-50 on small images: the structure of the real one, in seconds.
SMALL = ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
         "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
         "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "MODEL.DEVICE", "cpu",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # untrained: keep every box to compare


def _count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def test_attention_reaches_the_res5_head():
    model = build_model(load_config(f"{C4}_se_aw.yaml", SMALL))
    assert _count(model.roi_heads.res5, AWConv2d) == 3 and _count(model.roi_heads.res5, SqueezeExcitation) == 3
    assert _count(model.backbone, AWConv2d) == 4 + 6  # res3, res4
    model.train()
    with EventStorage():
        losses = model(synthetic_batch(load_config(f"{C4}_se_aw.yaml", SMALL), 1, train=True))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_heads.res5[0].conv2.generator.expand.weight.grad.abs().sum() > 0


def test_fresh_attention_head_is_detectron2s_c4_model():
    torch.manual_seed(0)
    ours = build_model(load_config(f"{C4}_aw.yaml", SMALL)).eval()
    cfg = get_cfg()
    cfg.merge_from_file(D2_C4)
    cfg.merge_from_list(SMALL)
    theirs = build_model(cfg).eval()  # Detectron2's own backbone and Res5ROIHeads
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and all(".generator." in k for k in unexpected)
    images = torch.rand(2, 3, 96, 128) * 255
    boxes = torch.randn(5, 256, 14, 14)  # pooled res4 box features (256 channels here)
    with torch.no_grad():
        got, expected = ours.backbone(images)["res4"], theirs.backbone(images)["res4"]
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(ours.roi_heads.res5(boxes), theirs.roi_heads.res5(boxes))
        ours.roi_heads.res5[0].conv2.generator.expand.weight.normal_()  # the attention matters
        assert not torch.allclose(ours.roi_heads.res5(boxes), theirs.roi_heads.res5(boxes))


@pytest.mark.parametrize("head,fix", [("Res5ROIHeads", "set MODEL.ROI_HEADS.NAME AttentionRes5ROIHeads"),
                                      ("StandardROIHeads", "remove res5 from it")])
def test_res5_attention_without_a_res5_is_refused(head, fix):
    cfg = load_config(f"{C4}_se_aw.yaml", [*SMALL, "MODEL.ROI_HEADS.NAME", head])
    with pytest.raises(ConfigError, match=f"MODEL.ACT_ATTENTION.STAGES, MODEL.AW.STAGES has res5, which "
                                          f"this backbone does not build.*{fix}"):
        build_model(cfg)
    cfg.MODEL.AW.STAGES = cfg.MODEL.ACT_ATTENTION.STAGES = ["res3", "res4"]
    if head == "Res5ROIHeads":
        assert _count(build_model(cfg), AWConv2d) == 10  # res3 and res4 only, as asked
