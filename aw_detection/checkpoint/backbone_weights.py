"""ResNet weights from elsewhere, renamed on load to the model's own Detectron2 ResNet.

- **torchvision** ResNet state dicts (``resnet50-*.pth``: ``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``downsample.0/1``, ``fc``), renamed as Detectron2's
  ``tools/convert-torchvision-to-d2.py`` renames them (``stem.conv1``, ``stem.conv1.norm``,
  ``res2.0.conv1``, ``shortcut``, ``shortcut.norm``), but to exact names under the model's
  ResNet instead of name-matching heuristics. ``fc`` becomes the head of an
  ``ImageClassifier`` (same shape) and is dropped otherwise. Such weights expect torchvision's
  preprocessing and block layout: :func:`apply_torchvision_settings` sets them in a config
  (one log line), and loading refuses a model built without them.
- **classification checkpoints** of ``tools/train_classification.py`` (``backbone.*`` +
  ``head.*``): the backbone tensors, attention included, go under the model's ResNet
  (``backbone.bottom_up.`` in an FPN detector) and the head is dropped, in one log line.
"""
import logging
import os
from collections import OrderedDict

import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from aw_detection.errors import UserError

__all__ = ["TORCHVISION_SETTINGS", "is_torchvision_resnet", "torchvision_to_detectron2",
           "adapt_backbone_checkpoint", "apply_torchvision_settings"]

logger = logging.getLogger("aw_detection")

# What torchvision's ResNets were trained with: RGB in 0-255 units normalised by ImageNet's
# mean/std (torchvision's 0-1 values x 255), stride 2 in the 3x3 conv of a bottleneck.
TORCHVISION_SETTINGS = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
}
BATCH_NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "nnSyncBN")
CLASSIFIER_BACKBONE, CLASSIFIER_HEAD = "backbone.", "head."


def _strip_module(state):
    """Names of a DDP-wrapped model's state dict without the ``module.`` prefix (a copy)."""
    state = OrderedDict(state)
    consume_prefix_in_state_dict_if_present(state, "module.")
    return state


def is_torchvision_resnet(state):
    state = _strip_module(state)
    return all(k in state for k in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight"))


def torchvision_to_detectron2(state):
    """{Detectron2 ResNet name: tensor} and the ``fc`` tensors {"weight", "bias"} apart."""
    resnet, fc = {}, {}
    for key, value in _strip_module(state).items():
        parts = key.split(".")
        if parts[0] == "fc":
            fc[parts[1]] = value
            continue
        if parts[0].startswith("layer"):
            parts[0] = f"res{int(parts[0][len('layer'):]) + 1}"
        else:
            parts.insert(0, "stem")
        parts = [f"conv{p[2:]}.norm" if p in ("bn1", "bn2", "bn3") else p for p in parts]
        name = ".".join(parts).replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        resnet[name] = value
    return resnet, fc


def _resnet_prefix(model):
    """"backbone.bottom_up." (FPN detector), "backbone." (plain ResNet detector or
    classifier), "" (a bare ResNet), or None (no Detectron2 ResNet in the model)."""
    for name, module in model.named_modules():
        if isinstance(module, ResNet):
            return f"{name}." if name else ""
    return None


def _check_torchvision_model(model, filename):
    """The model must preprocess and stride as torchvision's ResNets did."""
    problems = []
    if getattr(model, "input_format", "RGB") != "RGB":
        problems.append(f"INPUT.FORMAT is {model.input_format}")
    for attr, key in (("pixel_mean", "MODEL.PIXEL_MEAN"), ("pixel_std", "MODEL.PIXEL_STD")):
        value = getattr(model, attr, None)
        wanted = torch.tensor(TORCHVISION_SETTINGS[key])
        if value is not None and not torch.allclose(value.flatten().cpu(), wanted, atol=1e-3):
            problems.append(f"{key} is {[round(v, 3) for v in value.flatten().tolist()]}")
    if any(isinstance(m, BottleneckBlock) and m.conv1.stride != (1, 1) for m in model.modules()):
        problems.append("MODEL.RESNETS.STRIDE_IN_1X1 is True")
    if problems:
        wanted = " ".join(f"{k} {v}" for k, v in TORCHVISION_SETTINGS.items())
        raise UserError(f"MODEL.WEIGHTS {filename} is a torchvision ResNet, but the model was built "
                        f"for other inputs ({'; '.join(problems)}). Set {wanted} (tools set them "
                        "when MODEL.WEIGHTS is a local file)")


def _from_torchvision(weights, model, prefix, filename):
    resnet, fc = torchvision_to_detectron2(weights)
    own = model.state_dict()
    renamed = _drop_untracked({prefix + k: v for k, v in resnet.items()}, own)
    head = {CLASSIFIER_HEAD + k: v for k, v in fc.items()}
    if head and all(k in own and own[k].shape == v.shape for k, v in head.items()):
        renamed.update(head)
        fate = "its fc layer loads into the classifier head"
    else:
        fate = "its fc classifier is dropped" if fc else "it has no fc classifier"
    logger.info(f"MODEL.WEIGHTS {filename} is a torchvision ResNet state dict: {len(resnet)} "
                f"tensors renamed to Detectron2's ResNet under '{prefix}' (as "
                f"tools/convert-torchvision-to-d2.py renames them); {fate}")
    return renamed


def _drop_untracked(weights, own):
    """BatchNorm's step counters, where the model's norm (e.g. FrozenBN) has none."""
    return {k: v for k, v in weights.items()
            if not (k.endswith("num_batches_tracked") and k not in own)}


def _from_classifier(weights, model, prefix, filename):
    head = [k for k in weights if k.startswith(CLASSIFIER_HEAD)]
    classes = weights[CLASSIFIER_HEAD + "weight"].shape[0]
    renamed = _drop_untracked({prefix + k[len(CLASSIFIER_BACKBONE):]: v for k, v in weights.items()
                               if k.startswith(CLASSIFIER_BACKBONE)}, model.state_dict())
    logger.info(f"MODEL.WEIGHTS {filename} is a classification checkpoint: its {len(renamed)} "
                f"backbone tensors load under '{prefix}'; its head ({len(head)} tensors, "
                f"{classes} classes) is dropped")
    return renamed


def _is_classifier_checkpoint(weights):
    return (CLASSIFIER_HEAD + "weight" in weights
            and all(k.startswith((CLASSIFIER_BACKBONE, CLASSIFIER_HEAD)) for k in weights))


def adapt_backbone_checkpoint(checkpoint, model, filename=""):
    """A loaded checkpoint ({"model": state, ...}) with torchvision or classification weights
    renamed for ``model`` (see the module docstring); any other checkpoint unchanged."""
    weights = checkpoint.get("model")
    if not isinstance(weights, dict) or checkpoint.get("matching_heuristics"):
        return checkpoint  # Caffe2 / converted .pkl files: Detectron2 matches their names
    torchvision = is_torchvision_resnet(weights)
    classifier = not torchvision and _is_classifier_checkpoint(weights)
    if not (torchvision or classifier):
        return checkpoint
    prefix = _resnet_prefix(model)
    if prefix is None:
        raise UserError(f"MODEL.WEIGHTS {filename} holds ResNet weights, but the model has no "
                        "Detectron2 ResNet to load them into (MODEL.BACKBONE.NAME)")
    if torchvision:
        _check_torchvision_model(model, filename)
        weights = _from_torchvision(weights, model, prefix, filename)
    elif CLASSIFIER_HEAD + "weight" in model.state_dict():
        return checkpoint  # a classifier: the names are its own
    else:
        weights = _from_classifier(weights, model, prefix, filename)
    return dict(checkpoint, model=weights)


def _set(cfg, key, value):
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a, b):
    if isinstance(b, list):
        return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b))
    return a == b


def _read_state(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip file (e.g. a .pkl): the checkpointer reports it
        return None
    return state if isinstance(state, dict) else None


def apply_torchvision_settings(cfg, explicit_keys=()):
    """When MODEL.WEIGHTS is a local torchvision ResNet file, set what it needs
    (:data:`TORCHVISION_SETTINGS`) with one log line. A value given on the command line
    (``explicit_keys``) that contradicts them is a UserError; a config file's is replaced."""
    path = cfg.MODEL.WEIGHTS
    if not path or not os.path.isfile(path) or path.endswith(".pkl"):
        return False
    state = _read_state(path)
    if state is None or not is_torchvision_resnet(state.get("model", state)):
        return False
    if cfg.MODEL.RESNETS.NORM not in BATCH_NORMS:
        raise UserError(f"MODEL.WEIGHTS {path} is a torchvision ResNet with BatchNorm statistics; "
                        f"MODEL.RESNETS.NORM must be one of {', '.join(BATCH_NORMS)} (is "
                        f"{cfg.MODEL.RESNETS.NORM!r})")
    changed = []
    for key, value in TORCHVISION_SETTINGS.items():
        current = _get(cfg, key)
        if _same(current, value):
            continue
        if key in explicit_keys:
            raise UserError(f"MODEL.WEIGHTS {path} is a torchvision ResNet, which needs {key} "
                            f"{value}, but the command line sets {current}")
        _set(cfg, key, value)
        changed.append(f"{key} {current} -> {value}")
    logger.info(f"MODEL.WEIGHTS {path} is a torchvision ResNet: "
                + ("set " + ", ".join(changed) if changed else "the config already has its "
                   "settings (RGB, torchvision mean/std, stride in the 3x3)"))
    return True
