"""The AW attention generators' learning rate and weight decay as multiples of the solver's
(``MODEL.AW.GENERATOR_LR_FACTOR`` / ``GENERATOR_WEIGHT_DECAY_FACTOR``): ablation knobs. At
their default 1.0 the optimizer is left exactly as built (the paper's formulation)."""
import logging

__all__ = ["scale_generator_params"]

logger = logging.getLogger("aw_detection")

GENERATOR_MARKER = ".generator."  # AWConv2d.generator, also inside an AA layer's AW branch


def scale_generator_params(optimizer, model, cfg):
    """Move the generator parameters of every param group into a twin group whose ``lr`` and
    ``weight_decay`` are scaled; call before the LR scheduler records the initial LRs."""
    lr_factor = cfg.MODEL.AW.GENERATOR_LR_FACTOR
    decay_factor = cfg.MODEL.AW.GENERATOR_WEIGHT_DECAY_FACTOR
    if lr_factor == 1.0 and decay_factor == 1.0:
        return optimizer
    generator = {id(p) for name, p in model.named_parameters() if GENERATOR_MARKER in name}
    twins, moved = [], 0
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if id(p) in generator]
        if not params:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in generator]
        twins.append(dict(group, params=params, lr=group["lr"] * lr_factor,
                          weight_decay=group["weight_decay"] * decay_factor))
        moved += len(params)
    optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
    for twin in twins:
        optimizer.add_param_group(twin)
    logger.info(f"AW generators: {moved} parameter tensors at {lr_factor:g}x the learning rate "
                f"and {decay_factor:g}x the weight decay (MODEL.AW.GENERATOR_*_FACTOR)")
    return optimizer
