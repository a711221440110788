"""Model statistics: parameters and fvcore GFLOPs of a Detectron2 model built from a config."""
import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

from .layers import add_flop_handles

__all__ = ["count_parameters", "count_gflops", "model_statistics"]


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def count_gflops(model, height, width):
    """fvcore GFLOPs (1 multiply-add = 1 flop) of inference on one random height x width image:
    {"total": ..., "backbone": ...}.

    The box head's cost depends on how many proposals survive the RPN's NMS, which varies
    between (randomly initialised) models; NMS is switched off while counting so that every
    model's box head sees exactly POST_NMS_TOPK_TEST proposals and totals are comparable."""
    image = torch.rand(3, height, width, device=next(model.parameters()).device) * 255
    rpn = getattr(model, "proposal_generator", None)
    saved = getattr(rpn, "nms_thresh", None)
    if saved is not None:
        rpn.nms_thresh = 1.0  # IoU never exceeds 1: NMS keeps every proposal
    try:
        with torch.no_grad():
            total = _gflops(model.eval(), [{"image": image}])
            normalised = ((image - model.pixel_mean) / model.pixel_std)[None]
            backbone = _gflops(model.backbone, normalised)
    finally:
        if saved is not None:
            rpn.nms_thresh = saved
    return {"total": total, "backbone": backbone}


def _gflops(module, inputs):
    analysis = add_flop_handles(FlopCountAnalysis(module, inputs))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def model_statistics(cfg, height=None, width=None, model=None):
    """{"params", "gflops", "backbone_gflops", "input": [h, w]}; the input defaults to the
    config's test size (MIN_SIZE_TEST x the matching 4:3 width, capped by MAX_SIZE_TEST)."""
    model = model or build_model(cfg)
    height = height or cfg.INPUT.MIN_SIZE_TEST
    width = width or min(round(height * 4 / 3), cfg.INPUT.MAX_SIZE_TEST)
    gflops = count_gflops(model, height, width)
    return {"params": count_parameters(model), "gflops": gflops["total"],
            "backbone_gflops": gflops["backbone"], "input": [height, width]}
