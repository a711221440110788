"""Config keys of aw_detection. This is the only place they are created."""
from detectron2.config import CfgNode as CN


def add_aw_config(cfg):
    """Add the aw_detection keys to a Detectron2 config (in place) and return it."""
    _C = cfg

    # AW-convolution (Zhu et al., ICANN 2021): the 3x3 conv(s) of every residual block in
    # STAGES convolve with (1 + A[n]) * K, A[n] shaped like the kernel.
    _C.MODEL.AW = CN()
    _C.MODEL.AW.ENABLED = False
    # Detectron2 freezes stem and res2 by default (BACKBONE.FREEZE_AT=2), so res3-res5.
    _C.MODEL.AW.STAGES = ["res3", "res4", "res5"]
    # Generator hidden width: max(C_in // REDUCTION, 8).
    _C.MODEL.AW.REDUCTION = 16
    # Attention rows G. 0: one row per output channel (the literal weight-shaped map,
    # "AW-full"); G > 0: each row shared by C_out // G consecutive output channels ("AW-lite").
    _C.MODEL.AW.ATTENTION_GROUPS = 0

    # Activation attention on the residual branch output, before the sum (as SE/CBAM do).
    _C.MODEL.ACT_ATTENTION = CN()
    # "" (off), "SE" (Hu et al., CVPR 2018) or "CBAM" (Woo et al., ECCV 2018).
    _C.MODEL.ACT_ATTENTION.TYPE = ""
    _C.MODEL.ACT_ATTENTION.STAGES = ["res3", "res4", "res5"]
    # Channel-MLP reduction ratio (16 in both papers).
    _C.MODEL.ACT_ATTENTION.REDUCTION = 16

    # Attention-augmented convolution (Bello et al., ICCV 2019).
    _C.MODEL.AA = CN()
    _C.MODEL.AA.ENABLED = False
    # Attention memory grows with (H*W)^2, so only the coarsest stage by default.
    _C.MODEL.AA.STAGES = ["res5"]
    _C.MODEL.AA.HEADS = 8
    # Key and value channels as fractions of the conv's output channels (kappa, upsilon).
    _C.MODEL.AA.KAPPA = 0.2
    _C.MODEL.AA.NU = 0.1
    # Largest attention map side (after the stride-2 pooling) the relative tables cover; a
    # larger map is an error. 128 covers res4 and res5 of COCO inputs (longest side 1333).
    _C.MODEL.AA.MAX_SIZE = 128

    # "SGD" (Detectron2's optimizer) or "ADAMW". AdamW trains the small from-scratch demo
    # models much faster on CPU; COCO configs keep SGD as in the model zoo.
    _C.SOLVER.OPTIMIZER = "SGD"
    return cfg
