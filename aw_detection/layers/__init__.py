from .aa_conv import AAConv2d, MultiHeadRelativeAttention, aa_channels
from .activation_attention import CBAM, SqueezeExcitation, create_act_attention
from .aw_conv import AWConv2d, aw_conv2d_reference
from .flops import add_flop_handles, flop_count
from .relative_logits import rel_to_abs, relative_logits_2d, relative_logits_2d_naive

__all__ = [k for k in globals().keys() if not k.startswith("_")]
