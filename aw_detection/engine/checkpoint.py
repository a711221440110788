"""A DetectionCheckpointer that reports new attention parameters in one line."""
from collections import Counter

from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

__all__ = ["AWCheckpointer", "is_attention_param"]

# Sub-module names under which our layers keep the parameters a plain ResNet does not have.
ATTENTION_MARKERS = (".generator.", ".act_attention.", ".attention_branch.")


def is_attention_param(name):
    return any(marker in name for marker in ATTENTION_MARKERS)


class AWCheckpointer(DetectionCheckpointer):
    """Loading baseline or ImageNet weights into an attention model is expected to miss
    the attention parameters (they start at their neutral init): say so in one line and keep
    Detectron2's warnings for everything else."""

    def _log_incompatible_keys(self, incompatible):
        new = [k for k in incompatible.missing_keys if is_attention_param(k)]
        if new:
            stages = Counter(k.split(".")[k.split(".").index("bottom_up") + 1]
                             if "bottom_up" in k else k.split(".")[0] for k in new)
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
