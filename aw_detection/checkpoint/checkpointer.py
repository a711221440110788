"""A DetectionCheckpointer that says what a weights file does to the model, in one line each.

- New attention parameters missing from baseline / ImageNet weights keep their neutral init:
  one line.
- Training from weights of another task (fine-tuning to new classes): tensors that do not fit
  (the class-specific heads) keep their init: one line naming them and the class counts.
- ``strict=True`` (inference, evaluation, export): a tensor that does not fit, a missing
  non-attention parameter or a checkpoint tensor the model lacks is a UserError naming the
  tensors and the likely cause; trained weights are never silently replaced by random ones.
- An unreadable file, or optimizer/scheduler state that does not fit on ``--resume``, is a
  UserError naming the real cause.
"""
from collections import Counter

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import _IncompatibleKeys

from aw_detection.checkpoint.backbone_weights import adapt_backbone_checkpoint
from aw_detection.errors import UserError, few
from aw_detection.layers import AAConv2d

__all__ = ["AWCheckpointer", "is_attention_param"]

# Sub-module names under which our layers keep the parameters a plain ResNet does not have.
ATTENTION_MARKERS = (".generator.", ".act_attention.", ".attention_branch.")


def is_attention_param(name):
    return any(marker in name for marker in ATTENTION_MARKERS)


class AWCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer with one-line reports and clear errors (module docstring).

    An AAConv2d replaces a plain conv ``P`` by a narrower branch ``P.conv``: a checkpoint's
    plain ``P.weight`` (C_out filters) loads its first ``C_out - d_v`` filters into it.
    """

    def __init__(self, model, save_dir="", *, strict=False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._model_loaded = False
        self._source = "MODEL.WEIGHTS"  # what the file being loaded is, for messages

    def resume_or_load(self, path, *, resume=True):
        resuming = resume and self.has_checkpoint()
        self._source = "the last checkpoint (--resume)" if resuming else "MODEL.WEIGHTS"
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._source = "MODEL.WEIGHTS"

    def load(self, path, *args, **kwargs):
        self._model_loaded = False
        try:
            return super().load(path, *args, **kwargs)
        except UserError:
            raise
        except (OSError, AssertionError) as e:
            if self._model_loaded:
                raise
            raise self._cannot_open(path, e) from e  # missing (fvcore asserts), not downloadable
        except Exception as e:
            if not (self._model_loaded and self._source != "MODEL.WEIGHTS"):
                raise
            # The model loaded; the optimizer / scheduler state that --resume restores did not.
            raise UserError(
                f"{path}: its optimizer/scheduler state does not fit this run ({type(e).__name__}: "
                f"{e}). The config probably changed since it was written; start a new run from "
                f"its weights with MODEL.WEIGHTS {path} (without --resume)") from e

    def _cannot_open(self, path, error):
        hint = (" Without internet, download it elsewhere and set MODEL.WEIGHTS to the "
                "local file" if self._source == "MODEL.WEIGHTS" else "")
        return UserError(f"{self._source} {path} cannot be opened ({error}).{hint}")

    def _load_file(self, filename):
        try:
            checkpoint = super()._load_file(filename)
        except (OSError, AssertionError) as e:
            raise self._cannot_open(filename, e) from e
        except Exception as e:  # unpickling / zip / format errors: not a checkpoint
            raise UserError(f"{self._source} {filename} is not a readable Detectron2 checkpoint "
                            f"(.pth or .pkl): {type(e).__name__}: {e}") from e
        # torchvision ResNets and classification checkpoints: renamed to this model's ResNet.
        return adapt_backbone_checkpoint(checkpoint, self.model, filename)

    def _load_model(self, checkpoint):
        if not isinstance(checkpoint.get("model"), dict):
            raise UserError("the weights file holds no model state dict")
        self._split_aa_convs(checkpoint)
        incompatible = super()._load_model(checkpoint)
        self._model_loaded = True
        # Parameters, not buffers: BatchNorm fills in a missing num_batches_tracked itself.
        params = {name for name, _ in self.model.named_parameters()}
        if params and params <= set(incompatible.missing_keys):
            raise UserError("the weights match none of the model's parameters: are they for "
                            "this architecture (MODEL.RESNETS.DEPTH, heads)?")
        if self.strict:
            self._refuse_misfits(incompatible)
        return incompatible

    def _split_aa_convs(self, checkpoint):
        branches = {f"{name}.weight": (f"{name}.conv.weight", m)
                    for name, m in self.model.named_modules() if isinstance(m, AAConv2d)}
        if not branches:
            return
        weights = checkpoint["model"]
        if checkpoint.get("matching_heuristics", False):
            # Match names (e.g. Caffe2's) against the plain-conv layout of the AA layers.
            self._convert_ndarray_to_tensor(weights)
            layout = self.model.state_dict()
            for plain_key, (branch_key, layer) in branches.items():
                branch = layout.pop(branch_key)
                layout[plain_key] = branch.new_empty((layer.out_channels, *branch.shape[1:]))
            weights = align_and_update_state_dicts(
                layout, weights, c2_conversion=checkpoint.get("__author__") == "Caffe2")
            checkpoint["model"], checkpoint["matching_heuristics"] = weights, False
        moved = 0
        for plain_key, (branch_key, layer) in branches.items():
            plain = weights.get(plain_key)
            if plain is not None and branch_key not in weights and plain.shape[0] == layer.out_channels:
                weights[branch_key] = weights.pop(plain_key)[: layer.conv.out_channels]
                moved += 1
        if moved:
            self.logger.info(f"AA: {moved} plain convs loaded into AA conv branches "
                             "(their first C_out - d_v filters)")

    def _class_counts(self, incorrect_shapes):
        """(checkpoint classes, model classes) read off the classification layer when they
        differ, else None."""
        for key, ckpt_shape, model_shape in incorrect_shapes:
            if key.endswith("box_predictor.cls_score.weight"):  # K + 1 rows (background)
                counts = ckpt_shape[0] - 1, model_shape[0] - 1
            elif key.endswith("cls_score.weight") and hasattr(self.model, "num_classes"):
                per_class = model_shape[0] // self.model.num_classes  # RetinaNet: A * K rows
                counts = ckpt_shape[0] // per_class, self.model.num_classes
            else:
                continue
            return counts if counts[0] != counts[1] else None
        return None

    def _refuse_misfits(self, incompatible):
        misshapen = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [k for k in incompatible.missing_keys if k not in misshapen
                   and not is_attention_param(k) and not k.endswith("num_batches_tracked")]
        problems = []
        if incompatible.incorrect_shapes:
            problems.append("tensors of other shapes: " + few(
                f"{k} {tuple(c)} in the checkpoint, {tuple(m)} in the model"
                for k, c, m in incompatible.incorrect_shapes))
        if missing:
            problems.append("model parameters it lacks: " + few(missing))
        if incompatible.unexpected_keys:
            problems.append("tensors the model lacks: " + few(incompatible.unexpected_keys))
        if not problems:
            return
        counts = self._class_counts(incompatible.incorrect_shapes)
        if counts:
            cause = (f"the checkpoint has {counts[0]} classes, the config {counts[1]}: use the "
                     "config.yaml of the run that wrote it")
        elif any(is_attention_param(k) for k in incompatible.unexpected_keys):
            cause = ("the checkpoint has attention the config does not enable: use the "
                     "config.yaml of the run that wrote it")
        else:
            cause = ("the config describes another architecture than the one that wrote the "
                     "checkpoint: use the config.yaml of the run that wrote it")
        raise UserError(f"the weights do not fit the model ({'; '.join(problems)}). Likely "
                        f"cause: {cause}. Inference with them would use random tensors")

    def _log_incompatible_keys(self, incompatible):
        new = [k for k in incompatible.missing_keys if is_attention_param(k)]
        if new:
            parts = [k.split(".") for k in new]
            stages = Counter(next((p for p in ks if p.startswith("res")), ks[0]) for ks in parts)
            where = ", ".join(f"{s} ({n})" for s, n in sorted(stages.items()))
            self.logger.info(
                f"{len(new)} attention parameter tensors are not in the checkpoint and keep "
                f"their initialisation (expected for baseline/ImageNet weights): {where}"
            )
        if incompatible.incorrect_shapes:
            counts = self._class_counts(incompatible.incorrect_shapes)
            why = (f" (fine-tuning from {counts[0]} to {counts[1]} classes)" if counts else "")
            self.logger.info(
                f"{len(incompatible.incorrect_shapes)} checkpoint tensors do not fit the model and "
                f"keep their initialisation{why}: "
                + few(k for k, _, _ in incompatible.incorrect_shapes))
        misshapen = {k for k, _, _ in incompatible.incorrect_shapes}  # reported above
        rest = [k for k in incompatible.missing_keys
                if not is_attention_param(k) and k not in misshapen]
        super()._log_incompatible_keys(_IncompatibleKeys(
            missing_keys=rest, unexpected_keys=incompatible.unexpected_keys, incorrect_shapes=[],
        ))
