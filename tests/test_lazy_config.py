"""LazyConfig: one .py file per detector family, depth and schedule; `variant=NAME` picks the
attention. Every YAML detector config has such a twin, which builds its model with the same
schedule and data settings and trains with tools/lazyconfig_train_net.py."""
import glob
import json
import numbers
import os
import re
from collections.abc import Mapping, Sequence

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.utils.testing import assert_instances_allclose

from aw_detection.config import load_config
from aw_detection.errors import ConfigError, UserError
from aw_detection.data import prepare_datasets
from aw_detection.lazy_config import check_lazy_datasets, load_lazy_config
from aw_detection.modeling import attention_resnet

from .conftest import ROOT, run_tool
from .test_detectors import activate_attention

CONFIGS = os.path.join(ROOT, "configs")
YAMLS = sorted(glob.glob(f"{CONFIGS}/COCO-*/*_FPN_*.yaml") + glob.glob(f"{CONFIGS}/demo/*.yaml"))
_FAMILY = re.compile(r"(.*(?:_FPN_\dx|shapes_R_18_FPN|shapes_retinanet_R_18_FPN))(?:_(\w+))?\.yaml$")
# Instantiated in full (on the meta device: no memory, no initialisation cost): the demo
# configs, every COCO variant at R-50 1x and every COCO baseline. The variants merge through
# the same code at every depth and schedule.
BUILT = [p for p in YAMLS if "/demo/" in p or "_R_50_FPN_1x" in p or re.search(r"FPN_\dx\.yaml$", p)]


def twin(yaml_path):
    """(the family's .py file, overrides) that make the LazyConfig twin of a YAML config."""
    family, variant = _FAMILY.match(yaml_path).groups()
    return family + ".py", [f"variant={variant}"] if variant else []


def _rel(path):
    return os.path.relpath(path, CONFIGS)


def test_every_detector_yaml_config_has_a_lazy_twin():
    assert len(YAMLS) == 124
    families = sorted(glob.glob(f"{CONFIGS}/COCO-*/*.py") + glob.glob(f"{CONFIGS}/demo/*.py"))
    assert sorted({twin(p)[0] for p in YAMLS}) == families and len(families) == 14
    for path in YAMLS:
        load_lazy_config(*twin(path))  # an unknown variant is refused
    with pytest.raises(UserError, match=r"variant=aw_lite: .*shapes_R_18_FPN.py has the variants \['aa', "):
        load_lazy_config(f"{CONFIGS}/demo/shapes_R_18_FPN.py", ["variant=aw_lite"])


_SKIP = object()


def _plain(value):
    """A module attribute as comparable data: numbers, strings, lists, dicts; objects (Matcher,
    Box2BoxTransform, ...) by their attributes; submodules and callables skipped."""
    if isinstance(value, torch.nn.Module) or callable(value):
        return _SKIP
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape)) if value.device.type == "meta" else value.tolist()
    if value is None or isinstance(value, (numbers.Number, str)):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        items = [_plain(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    if hasattr(value, "__dict__"):
        return _plain({k: v for k, v in vars(value).items() if not k.startswith("_")})
    return repr(value)


def module_settings(model):
    """{module.attribute: value} for every plain attribute of every submodule: thresholds,
    loss settings, strides, ... (what parameter shapes do not show)."""
    out = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            value = _plain(value)
            if not key.startswith("_") and key != "training" and value is not _SKIP:
                out[f"{name}.{key}"] = value
        if name.endswith("box_predictor"):
            # The YAML path lists only loss_box_reg, the lazy one both; a missing key is 1.0.
            weights = out[f"{name}.loss_weight"]
            out[f"{name}.loss_weight"] = {k: weights.get(k, 1.0) for k in ("loss_cls", "loss_box_reg")}
    return out


def _yaml_model(path, device, opts=()):
    return build_model(load_config(path, ["MODEL.DEVICE", device, *opts]))


@pytest.mark.parametrize("path", BUILT, ids=_rel)
def test_lazy_twin_builds_the_yaml_model(path):
    lazy = load_lazy_config(*twin(path))
    with torch.device("meta"):
        ours, yaml_model = instantiate(lazy.model), _yaml_model(path, "meta")
    assert type(ours) is type(yaml_model)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in yaml_model.state_dict().items()}
    assert module_settings(ours) == module_settings(yaml_model)
    # The same parameters train (FREEZE_AT, frozen norms); shapes alone would not show it.
    assert {k: p.requires_grad for k, p in ours.named_parameters()} == \
        {k: p.requires_grad for k, p in yaml_model.named_parameters()}


def _scheduler_values(cfg, lazy):
    """LR multipliers of the YAML and the lazy schedule at the iterations where they change."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    yaml_schedule = build_lr_scheduler(cfg, optimizer)._multiplier
    lazy_schedule = instantiate(lazy.lr_multiplier)
    max_iter = cfg.SOLVER.MAX_ITER
    points = sorted({0, 1, cfg.SOLVER.WARMUP_ITERS - 1, cfg.SOLVER.WARMUP_ITERS, max_iter - 1,
                     *cfg.SOLVER.STEPS, *(s - 1 for s in cfg.SOLVER.STEPS)})
    return ([yaml_schedule(i / max_iter) for i in points],
            [lazy_schedule(i / lazy.train.max_iter) for i in points])


@pytest.mark.parametrize("py", sorted({twin(p)[0] for p in YAMLS}), ids=_rel)
def test_lazy_twin_has_the_yaml_schedule_and_data(py):
    cfg = load_config(py[:-3] + ".yaml")
    lazy = LazyConfig.load(py)
    optimizer = {"SGD": "SGD", "ADAMW": "AdamW"}[cfg.SOLVER.OPTIMIZER.upper()]
    assert lazy.optimizer._target_.__name__ == optimizer
    assert lazy.optimizer.lr == cfg.SOLVER.BASE_LR
    assert lazy.optimizer.weight_decay == cfg.SOLVER.WEIGHT_DECAY
    assert lazy.train.max_iter == cfg.SOLVER.MAX_ITER
    assert lazy.train.init_checkpoint == cfg.MODEL.WEIGHTS
    assert lazy.dataloader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    yaml_values, lazy_values = _scheduler_values(cfg, lazy)
    assert lazy_values == pytest.approx(yaml_values)
    assert lazy.dataloader.train.dataset.names in (cfg.DATASETS.TRAIN[0], list(cfg.DATASETS.TRAIN))
    assert lazy.dataloader.test.dataset.names in (cfg.DATASETS.TEST[0], list(cfg.DATASETS.TEST))
    resize = lazy.dataloader.train.mapper.augmentations[0]
    assert tuple(resize.short_edge_length) == tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    assert resize.max_size == cfg.INPUT.MAX_SIZE_TRAIN
    resize = lazy.dataloader.test.mapper.augmentations[0]
    assert (resize.short_edge_length, resize.max_size) == (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert lazy.dataloader.train.mapper.use_instance_mask == cfg.MODEL.MASK_ON


def _no_score_threshold(model):
    if hasattr(model, "roi_heads"):
        model.roi_heads.box_predictor.test_score_thresh = 0.0
    else:
        model.test_score_thresh = 0.0
    return model


@pytest.mark.parametrize("name,size", [
    ("demo/shapes_R_18_FPN_aa_aw", (160, 224)),
    ("demo/shapes_retinanet_R_18_FPN_se_aw", (160, 224)),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_aw_lite", (128, 160)),
    ("COCO-Detection/retinanet_R_50_FPN_1x_aa", (128, 160)),
])
def test_lazy_twin_computes_what_the_yaml_model_computes(name, size):
    path = f"{CONFIGS}/{name}.yaml"
    torch.manual_seed(0)
    yaml_model = _no_score_threshold(_yaml_model(path, "cpu"))
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1)) * 255
    activate_attention(yaml_model, [{"image": image}])  # A != 0
    lazy_model = _no_score_threshold(instantiate(load_lazy_config(*twin(path)).model)).eval()
    lazy_model.load_state_dict(yaml_model.state_dict())  # strict
    with torch.no_grad():
        tensor = yaml_model.preprocess_image([{"image": image}]).tensor
        features = yaml_model.backbone(tensor), lazy_model.backbone(tensor)
        outputs = yaml_model([{"image": image}]), lazy_model([{"image": image}])
    assert all(torch.equal(features[0][k], features[1][k]) for k in features[0])
    expected, got = (out[0]["instances"] for out in outputs)
    assert len(expected) > 0
    assert_instances_allclose(got, expected, rtol=0)


def test_attention_settings_are_checked():
    with pytest.raises(ConfigError, match=r"aw: unknown setting\(s\) \['enabeld'\]"):
        attention_resnet(depth=18, res2_out_channels=64, aw=dict(enabeld=True))
    with pytest.raises(ConfigError, match="FREEZE_AT=2 freezes it"):
        attention_resnet(freeze_at=2, aw=dict(enabled=True, stages=["res2"]))
    with pytest.raises(UserError, match="train has no 'max_iters'. Did you mean max_iter"):
        load_lazy_config(f"{CONFIGS}/demo/shapes_R_18_FPN.py", ["train.max_iters=3"])
    # an argument the LazyCall'd callable takes is a valid new key
    cfg = load_lazy_config(f"{CONFIGS}/demo/shapes_R_18_FPN.py",
                           ["model.roi_heads.box_predictor.test_topk_per_image=50"])
    assert cfg.model.roi_heads.box_predictor.test_topk_per_image == 50


@pytest.mark.parametrize("config,key", [("shapes_R_18_FPN_aw", "model.roi_heads.num_classes"),
                                        ("shapes_retinanet_R_18_FPN_aa_aw", "model.num_classes")])
def test_lazy_class_count_must_match_the_training_set(tiny_shapes, config, key):
    if "tiny_train" not in DatasetCatalog.list():
        prepare_datasets(tiny_shapes["args"][1::2], (), None)
    names = ["dataloader.train.dataset.names=tiny_train", "dataloader.test.dataset.names=tiny_val"]
    py, variant = twin(f"{CONFIGS}/demo/{config}.yaml")
    cfg = load_lazy_config(py, [*variant, *names])
    check_lazy_datasets(cfg)  # 5 classes, as the shapes data
    cfg = load_lazy_config(py, [*variant, *names, f"{key}=3"])
    with pytest.raises(UserError, match=rf"{key}=3 but dataset tiny_train has 5 categories; "
                                        rf"add the override {key}=5"):
        check_lazy_datasets(cfg)


def test_lazy_training_and_the_yaml_twin_agree(tiny_shapes, tmp_path):
    """A few iterations with tools/lazyconfig_train_net.py; the checkpoint then evaluates to
    the same AP through the YAML twin and tools/train_net.py (strict loading: same names)."""
    lazy_out, yaml_out = str(tmp_path / "lazy"), str(tmp_path / "yaml")
    run_tool("lazyconfig_train_net.py", "--config-file", f"{CONFIGS}/demo/shapes_R_18_FPN.py",
             *tiny_shapes["args"], "variant=aa_aw", "dataloader.train.dataset.names=tiny_train",
             "dataloader.test.dataset.names=tiny_val", "dataloader.train.num_workers=0",
             "dataloader.test.num_workers=0", "train.max_iter=3", f"train.output_dir={lazy_out}",
             "model.roi_heads.box_predictor.test_score_thresh=0.0")
    assert os.path.exists(os.path.join(lazy_out, "model_final.pth"))
    assert os.path.exists(os.path.join(lazy_out, "config.yaml"))
    assert any("total_loss" in json.loads(line) for line in open(os.path.join(lazy_out, "metrics.json")))
    run_tool("train_net.py", "--eval-only", "--config-file", f"{CONFIGS}/demo/shapes_R_18_FPN_aa_aw.yaml",
             *tiny_shapes["args"], "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)",
             "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
             "MODEL.WEIGHTS", os.path.join(lazy_out, "model_final.pth"), "OUTPUT_DIR", yaml_out)
    lazy_ap = json.load(open(os.path.join(lazy_out, "eval_results.json")))["tiny_val"]["bbox"]
    yaml_ap = json.load(open(os.path.join(yaml_out, "eval_results.json")))["tiny_val"]["bbox"]
    assert lazy_ap == yaml_ap
