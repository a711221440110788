"""Detectron2's own model-zoo configs (installed with detectron2), switched to our backbones with
AW on: each builds with AW in every stage it names (res5 of C4 models in the ROI head), trains
one CPU step and runs inference, or is refused with the documented message. The suite runs a
subset covering each kind of model; `pytest -m zoo tests/test_model_zoo.py` walks them all."""
import glob
import os

import detectron2
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Keypoints
from detectron2.utils.events import EventStorage

from aw_detection.config import add_aw_config
from aw_detection.errors import ConfigError
from aw_detection.experiments.benchmark import synthetic_batch
from aw_detection.layers import AWConv2d

ZOO = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
# Detectron2's builder -> ours; the switch docs/MODEL_ZOO.md tells users to make.
BACKBONES = {"build_resnet_backbone": "build_aw_resnet_backbone",
             "build_resnet_fpn_backbone": "build_aw_resnet_fpn_backbone",
             "build_retinanet_resnet_fpn_backbone": "build_aw_retinanet_resnet_fpn_backbone"}
BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
# Precomputed proposals (Fast R-CNN) need proposal files, not a backbone; quick_schedules
# repeat the others with tiny schedules.
WALK = sorted(os.path.relpath(p, ZOO) for p in glob.glob(os.path.join(ZOO, "*", "*.yaml"))
              if "quick_schedules" not in p and "fast_rcnn" not in os.path.basename(p))
QUICK = ["COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "COCO-Detection/rpn_R_50_C4_1x.yaml", "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
         "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml",
         "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
         "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml", "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml"]
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
         "INPUT.MAX_SIZE_TEST", "128", "MODEL.DEVICE", "cpu", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]


def switched(path):
    """The zoo config with our builders and AW-full on (the documented two-key switch)."""
    cfg = add_aw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ZOO, path))
    cfg.merge_from_list(SMALL)
    cfg.MODEL.BACKBONE.NAME = BACKBONES[cfg.MODEL.BACKBONE.NAME]
    if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
        cfg.MODEL.ROI_HEADS.NAME = "AttentionRes5ROIHeads"
    cfg.MODEL.AW.ENABLED = True
    for node in (cfg.MODEL.RESNETS, cfg.MODEL.FPN, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD,
                 cfg.MODEL.SEM_SEG_HEAD):
        if node.get("NORM") == "SyncBN":  # one CPU process: SyncBN's statistics are BN's
            node.NORM = "BN"
    return cfg


def _batch(cfg):
    batch = synthetic_batch(cfg, 1, train=True)
    for item in batch:
        h, w = item["image"].shape[1:]
        if cfg.MODEL.KEYPOINT_ON:
            boxes = item["instances"].gt_boxes.tensor
            k = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
            t = torch.rand(len(boxes), k, 1)
            xy = boxes[:, None, :2] + t * (boxes[:, None, 2:] - boxes[:, None, :2])
            item["instances"].gt_keypoints = Keypoints(torch.cat([xy, torch.full_like(t, 2)], dim=2))
        if cfg.MODEL.META_ARCHITECTURE in ("PanopticFPN", "SemanticSegmentor"):
            item["sem_seg"] = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (h, w))
    return batch


def _check(path):
    cfg = switched(path)
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE[1:]):
        with pytest.raises(ConfigError, match="deformable conv and attention cannot share a stage"):
            build_model(cfg)
        return
    if cfg.MODEL.META_ARCHITECTURE == "ProposalNetwork" and "res5" not in cfg.MODEL.RESNETS.OUT_FEATURES:
        with pytest.raises(ConfigError, match="MODEL.AW.STAGES has res5, which this backbone does "
                                              "not build.*remove res5 from it"):
            build_model(cfg)  # an RPN-only C4 model has no res5 anywhere
        return
    model = build_model(cfg)
    blocks = BLOCKS[cfg.MODEL.RESNETS.DEPTH]
    assert sum(isinstance(m, AWConv2d) for m in model.modules()) == sum(blocks[1:])  # res3-res5
    model.train()
    with EventStorage():
        losses = model(_batch(cfg))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    if cfg.MODEL.KEYPOINT_ON:
        # Detectron2's heatmap-to-keypoint step asserts on an untrained head's near-flat
        # heatmaps; inference then runs up to the boxes.
        model.roi_heads.box_predictor.test_score_thresh = 1.0
    with torch.no_grad():
        assert len(model(synthetic_batch(cfg, 1, train=False))) == 1


@pytest.mark.parametrize("path", QUICK)
def test_zoo_config_takes_attention(path):
    _check(path)


@pytest.mark.zoo
@pytest.mark.parametrize("path", sorted(set(WALK) - set(QUICK)))
def test_every_zoo_config_takes_attention(path):
    _check(path)
