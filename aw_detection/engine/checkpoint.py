"""A DetectionCheckpointer that reports new attention parameters in one line."""
from collections import Counter

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import _IncompatibleKeys

from ..errors import UserError
from ..layers import AAConv2d

__all__ = ["AWCheckpointer", "is_attention_param"]

# Sub-module names under which our layers keep the parameters a plain ResNet does not have.
ATTENTION_MARKERS = (".generator.", ".act_attention.", ".attention_branch.")


def is_attention_param(name):
    return any(marker in name for marker in ATTENTION_MARKERS)


class AWCheckpointer(DetectionCheckpointer):
    """Loading baseline or ImageNet weights into an attention model is expected to miss
    the attention parameters (they start at their neutral init): say so in one line and keep
    Detectron2's warnings for everything else.

    An AAConv2d replaces a plain conv ``P`` by a narrower branch ``P.conv``: a checkpoint's
    plain ``P.weight`` (C_out filters) loads its first ``C_out - d_v`` filters into it.
    """

    def load(self, path, *args, **kwargs):
        """Detectron2's load, with one clear error for a file that is not a checkpoint."""
        try:
            return super().load(path, *args, **kwargs)
        except UserError:
            raise
        except (OSError, AssertionError) as e:
            raise UserError(f"MODEL.WEIGHTS {path} cannot be opened ({e}). Without internet, "
                            "download it elsewhere and set MODEL.WEIGHTS to the local file") from e
        except Exception as e:  # unpickling / zip / format errors: not a checkpoint
            raise UserError(f"MODEL.WEIGHTS {path} is not a readable Detectron2 checkpoint "
                            f"(.pth or .pkl): {type(e).__name__}: {e}") from e

    def _load_model(self, checkpoint):
        if not isinstance(checkpoint.get("model"), dict):
            raise UserError("the weights file holds no model state dict")
        branches = {f"{name}.weight": (f"{name}.conv.weight", m)
                    for name, m in self.model.named_modules() if isinstance(m, AAConv2d)}
        if branches:
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
        incompatible = super()._load_model(checkpoint)
        # Parameters, not buffers: BatchNorm fills in a missing num_batches_tracked itself.
        params = {name for name, _ in self.model.named_parameters()}
        if params and params <= set(incompatible.missing_keys):
            raise UserError("the weights match none of the model's parameters: are they for "
                            "this architecture (MODEL.RESNETS.DEPTH, heads)?")
        return incompatible

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
        rest = [k for k in incompatible.missing_keys if not is_attention_param(k)]
        super()._log_incompatible_keys(_IncompatibleKeys(
            missing_keys=rest, unexpected_keys=incompatible.unexpected_keys,
            incorrect_shapes=incompatible.incorrect_shapes,
        ))
