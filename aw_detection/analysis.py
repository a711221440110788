"""Model statistics: parameters and fvcore GFLOPs of a Detectron2 model built from a config."""
import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

from .layers import add_flop_handles

__all__ = ["count_parameters", "count_gflops", "model_statistics"]


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def count_gflops(model, height, width):
    """fvcore GFLOPs (1 multiply-add = 1 flop) of inference on one random height x width image.

    The random image still gives the RPN's full POST_NMS_TOPK_TEST proposals, so the box head
    is counted at its test-time load."""
    image = torch.rand(3, height, width, device=next(model.parameters()).device) * 255
    analysis = add_flop_handles(FlopCountAnalysis(model.eval(), [{"image": image}]))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analysis.total() / 1e9


def model_statistics(cfg, height=None, width=None, model=None):
    """{"params": int, "gflops": float, "input": [h, w]}; the input defaults to the config's
    test size (MIN_SIZE_TEST x the matching 4:3 width, capped by MAX_SIZE_TEST)."""
    model = model or build_model(cfg)
    height = height or cfg.INPUT.MIN_SIZE_TEST
    width = width or min(round(height * 4 / 3), cfg.INPUT.MAX_SIZE_TEST)
    return {"params": count_parameters(model), "gflops": count_gflops(model, height, width),
            "input": [height, width]}
