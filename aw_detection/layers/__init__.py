from .activation_attention import CBAM, SqueezeExcitation, create_act_attention
from .aw_conv import AWConv2d, aw_conv2d_reference
from .flops import add_flop_handles, flop_count

__all__ = [k for k in globals().keys() if not k.startswith("_")]
