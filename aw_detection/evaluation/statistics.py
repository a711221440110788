"""Model statistics: parameters and fvcore GFLOPs of a Detectron2 model built from a config."""
import contextlib

import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import parameter_count

from aw_detection.data import image_size
from aw_detection.layers import add_flop_handles

__all__ = ["count_gflops", "model_statistics"]

@contextlib.contextmanager
def _fixed_proposals(model):
    """The box head's cost depends on how many proposals the RPN keeps (NMS, degenerate
    boxes), which varies between randomly initialised models. Here the RPN proposes its
    anchors unchanged (zero box deltas) without NMS: every model's box head sees exactly
    POST_NMS_TOPK_TEST proposals. A mask head's cost depends on the number of detections:
    with no score threshold it sees TEST.DETECTIONS_PER_IMAGE of them. Weights and
    thresholds are restored afterwards."""
    rpn = getattr(model, "proposal_generator", None)
    deltas = getattr(getattr(rpn, "rpn_head", None), "anchor_deltas", None)
    if deltas is None:
        yield
        return
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    score_thresh = getattr(predictor, "test_score_thresh", None)
    saved = rpn.nms_thresh, deltas.weight.detach().clone(), deltas.bias.detach().clone()
    rpn.nms_thresh = 1.0  # IoU never exceeds 1: NMS keeps every proposal
    if score_thresh is not None:
        predictor.test_score_thresh = 0.0
    with torch.no_grad():
        deltas.weight.zero_()
        deltas.bias.zero_()
    try:
        yield
    finally:
        rpn.nms_thresh = saved[0]
        if score_thresh is not None:
            predictor.test_score_thresh = score_thresh
        with torch.no_grad():
            deltas.weight.copy_(saved[1])
            deltas.bias.copy_(saved[2])


def count_gflops(model, height, width):
    """fvcore GFLOPs (1 multiply-add = 1 flop) of inference on one random height x width
    image, {"total": ..., "backbone": ...}, with the box head at a fixed load (see
    _fixed_proposals) so that models are comparable."""
    image = torch.rand(3, height, width, device=next(model.parameters()).device) * 255
    model.eval()
    with torch.no_grad(), _fixed_proposals(model):
        total = _gflops(model, [{"image": image}])
        # Normalised and padded to the backbone's size divisibility, as in the model.
        backbone = _gflops(model.backbone, model.preprocess_image([{"image": image}]).tensor)
    return {"total": total, "backbone": backbone}


def _gflops(module, inputs):
    analysis = add_flop_handles(FlopCountAnalysis(module, inputs))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def model_statistics(cfg, height=None, width=None, model=None):
    """{"params", "gflops", "backbone_gflops", "input": [h, w]}; the input defaults to the
    config's test size (MIN_SIZE_TEST x the matching 4:3 width, capped by MAX_SIZE_TEST)."""
    model = model or build_model(cfg)
    if height is None:
        height, width = image_size(cfg)
    gflops = count_gflops(model, height, width)
    return {"params": parameter_count(model)[""], "gflops": gflops["total"],
            "backbone_gflops": gflops["backbone"], "input": [height, width]}
