"""fvcore FLOP handles for the ops our layers add.

fvcore counts convolutions, matrix products and einsum, and ignores elementwise ops. fvcore
counts a trace: ``flop_count`` traces AWConv2d with its grouped formulation, which does the
eager FLOPs at any batch (the default trace formulation does N times the convolution FLOPs at
N > 1, see ``aw_conv``). Two ops fvcore does not know:

- AWConv2d's kernel modulation K + K * A, one ``aten::addcmul`` per layer as large as the
  kernel times the batch: one multiply-add per element, like a conv's MAC;
- AAConv2d's fused ``aten::scaled_dot_product_attention``: its two matrix products
  (q k^T and weights v), as fvcore counts them in the explicit path.
"""
from fvcore.nn.jit_handles import get_shape
from math import prod

from .aw_conv import traced_path

__all__ = ["add_flop_handles", "flop_count"]


def _addcmul_flop(inputs, outputs):
    return prod(get_shape(outputs[0]))


def _sdpa_flop(inputs, outputs):
    q, k, v = (get_shape(t) for t in inputs[:3])  # (..., L, d), (..., S, d), (..., S, d_v)
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def add_flop_handles(analysis):
    """Register our handles on an fvcore (or Detectron2) FlopCountAnalysis; returns it."""
    return analysis.set_op_handle("aten::addcmul", _addcmul_flop,
                                  "aten::scaled_dot_product_attention", _sdpa_flop)


def flop_count(module, inputs):
    """Total FLOPs (fvcore's convention: one multiply-add is one flop) of ``module(*inputs)``
    as run in eager mode."""
    from fvcore.nn import FlopCountAnalysis

    analysis = add_flop_handles(FlopCountAnalysis(module, inputs))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with traced_path("grouped"):
        return analysis.total()
