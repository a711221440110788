"""fvcore FLOP handles for the ops our layers add.

fvcore counts convolutions (the batch-folded grouped conv of AWConv2d included) and matrix
products, and ignores elementwise ops. AWConv2d's kernel modulation K + K * A is one
``aten::addcmul`` per layer, as large as the kernel times the batch: we count it as one
multiply-add per element, like a conv's MAC.
"""
from fvcore.nn.jit_handles import get_shape
from math import prod

__all__ = ["add_flop_handles", "flop_count"]


def _addcmul_flop(inputs, outputs):
    return prod(get_shape(outputs[0]))


def add_flop_handles(analysis):
    """Register our handles on an fvcore (or Detectron2) FlopCountAnalysis; returns it."""
    return analysis.set_op_handle("aten::addcmul", _addcmul_flop)


def flop_count(module, inputs):
    """Total FLOPs (fvcore's convention: one multiply-add is one flop) of ``module(*inputs)``."""
    from fvcore.nn import FlopCountAnalysis

    analysis = add_flop_handles(FlopCountAnalysis(module, inputs))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total()
