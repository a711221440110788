"""Training hooks of aw_detection."""
import re
from collections import defaultdict
from functools import partial

import torch
from detectron2.engine import HookBase

from ..layers import AWConv2d

__all__ = ["AttentionStats"]


class AttentionStats(HookBase):
    """Every ``period`` iterations, logs per stage the mean |A| of the AW layers
    (``aw/<stage>/abs_A``) and the mean |input| their generators see (``aw/<stage>/abs_input``):
    the generator has no normalisation, so A scales with the activations it is computed from.
    The attention is recomputed from the layers' inputs of that one step (a few % of a step)."""

    def __init__(self, model, period=20):
        self.period = period
        self.layers = [(self._stage(name), m) for name, m in model.named_modules()
                       if isinstance(m, AWConv2d)]
        self._handles, self._sums = [], defaultdict(list)

    @staticmethod
    def _stage(name):
        match = re.search(r"\b(res\d)\b", name)
        return match.group(1) if match else name

    def _capture(self, stage, layer, args):
        with torch.no_grad():
            x = args[0].float()
            self._sums[stage].append((layer.attention(x).abs().mean().item(), x.abs().mean().item()))

    def before_step(self):
        last = self.trainer.iter == self.trainer.max_iter - 1  # the writers write it too
        if self.layers and ((self.trainer.iter + 1) % self.period == 0 or last):
            self._handles = [layer.register_forward_pre_hook(partial(self._capture, stage))
                             for stage, layer in self.layers]

    def after_step(self):
        if not self._handles:
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []
        scalars = {}
        for stage, values in self._sums.items():
            scalars[f"aw/{stage}/abs_A"] = sum(v[0] for v in values) / len(values)
            scalars[f"aw/{stage}/abs_input"] = sum(v[1] for v in values) / len(values)
        self._sums.clear()
        self.trainer.storage.put_scalars(smoothing_hint=False, **scalars)
