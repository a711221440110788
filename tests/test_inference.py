"""Inference pieces: strict weight loading, the model's class metadata, detections as JSON."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.config import load_config
from aw_detection.errors import UserError
from aw_detection.engine.inference import class_metadata, detections_to_json

from .conftest import DEMO_CONFIG, ROOT

AW_CONFIG = f"{ROOT}/configs/demo/shapes_R_18_FPN_aw.yaml"


def _checkpoint(tmp_path, config, opts=(), drop=()):
    model = build_model(load_config(config, list(opts)))
    state = {k: v for k, v in model.state_dict().items() if k not in drop}
    path = str(tmp_path / "weights.pth")
    torch.save({"model": state}, path)
    return path, model.state_dict()


def _strict_load(config, path, opts=()):
    model = build_model(load_config(config, list(opts)))
    AWCheckpointer(model, strict=True).load(path)
    return model


def test_strict_loading_accepts_a_checkpoint_of_the_same_model(tmp_path):
    path, state = _checkpoint(tmp_path, AW_CONFIG)
    loaded = _strict_load(AW_CONFIG, path).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_strict_loading_allows_only_attention_to_be_missing(tmp_path, caplog):
    path, state = _checkpoint(tmp_path, DEMO_CONFIG)  # a baseline: AW starts at zero, exactly it
    loaded = _strict_load(AW_CONFIG, path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert all(not loaded[k].any() for k in loaded if ".generator.expand." in k)
    path, _ = _checkpoint(tmp_path, AW_CONFIG, drop=["roi_heads.box_head.fc1.weight"])
    with pytest.raises(UserError, match="model parameters it lacks: roi_heads.box_head.fc1.weight"):
        _strict_load(AW_CONFIG, path)


def test_strict_loading_refuses_attention_the_config_lacks(tmp_path):
    path, _ = _checkpoint(tmp_path, AW_CONFIG)
    with pytest.raises(UserError, match="tensors the model lacks: .*generator.*checkpoint has "
                                        "attention the config does not enable"):
        _strict_load(DEMO_CONFIG, path)


def test_strict_loading_refuses_other_shapes_naming_the_class_counts(tmp_path):
    path, _ = _checkpoint(tmp_path, DEMO_CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "15"])
    with pytest.raises(UserError, match=r"roi_heads.box_predictor.cls_score.weight \(16, 256\) in "
                                        r"the checkpoint, \(6, 256\) in the model.*checkpoint has "
                                        r"15 classes, the config 5"):
        _strict_load(DEMO_CONFIG, path)
    path, _ = _checkpoint(tmp_path, DEMO_CONFIG, ["MODEL.ROI_BOX_HEAD.FC_DIM", "128"])
    with pytest.raises(UserError, match="another architecture"):
        _strict_load(DEMO_CONFIG, path)


def test_class_metadata_prefers_the_run_and_refuses_a_wrong_count():
    cfg = load_config(DEMO_CONFIG)
    meta = class_metadata(cfg)  # from DATASETS.TEST = shapes_val
    assert meta.thing_classes[:2] == ["circle", "rectangle"] and meta.category_ids == [1, 2, 3, 4, 5]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.CLASS_NAMES, cfg.MODEL.CATEGORY_IDS = ["cat", "dog"], [17, 18]
    meta = class_metadata(cfg)
    assert meta.thing_classes == ["cat", "dog"] and meta.category_ids == [17, 18]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    with pytest.raises(UserError, match="names 2 classes but its model predicts 3"):
        class_metadata(cfg)


def test_detections_to_json_reports_dataset_ids_names_and_xywh():
    cfg = load_config(DEMO_CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    cfg.MODEL.CLASS_NAMES, cfg.MODEL.CATEGORY_IDS = ["cat", "dog"], [17, 40]
    instances = Instances((100, 200))
    instances.pred_boxes = Boxes(torch.tensor([[10.04, 20.0, 30.0, 60.26], [0.0, 0.0, 5.0, 5.0]]))
    instances.scores = torch.tensor([0.91234, 0.5])
    instances.pred_classes = torch.tensor([1, 0])
    assert detections_to_json(instances, class_metadata(cfg)) == [
        {"category_id": 40, "category": "dog", "score": 0.9123, "bbox": [10.0, 20.0, 20.0, 40.3]},
        {"category_id": 17, "category": "cat", "score": 0.5, "bbox": [0.0, 0.0, 5.0, 5.0]},
    ]
