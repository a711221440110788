"""Residual blocks with AW, AA, SE or CBAM attention: Detectron2's blocks, 3x3 conv(s) swapped.

Subclassing Detectron2's ``BottleneckBlock`` / ``BasicBlock`` keeps their parameter names, so
ImageNet ``R-50.pkl`` / ``R-101.pkl`` and baseline checkpoints load unchanged.
"""
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from ...errors import ConfigError
from ...layers import AAConv2d, AWConv2d, aa_channels, create_act_attention

__all__ = ["AttentionBasicBlock", "AttentionBottleneckBlock", "to_aa_conv", "to_aw_conv"]


def to_aw_conv(conv, reduction, attention_groups, kernel="auto"):
    """An AWConv2d computing what the Detectron2 ``Conv2d`` ``conv`` computes (same weight)."""
    aw = AWConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None, reduction=reduction,
        attention_groups=attention_groups, norm=conv.norm, activation=conv.activation,
        kernel=kernel,
    )
    aw.weight.data.copy_(conv.weight.data)
    if conv.bias is not None:
        aw.bias.data.copy_(conv.bias.data)
    return aw


def to_aa_conv(conv, heads, kappa, nu, max_size, aw=None):
    """An AAConv2d replacing ``conv``; its conv branch starts from ``conv``'s first filters."""
    if conv.groups != 1:
        raise ConfigError("MODEL.AA: grouped 3x3 convs (RESNETS.NUM_GROUPS > 1) are not supported")
    key_channels, value_channels = aa_channels(conv.out_channels, heads, kappa, nu)
    aa = AAConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, heads=heads,
        key_channels=key_channels, value_channels=value_channels, max_size=max_size,
        aw=aw or False, dilation=conv.dilation, norm=conv.norm, activation=conv.activation,
    )
    aa.conv.weight.data.copy_(conv.weight.data[: aa.conv.out_channels])
    return aa


class _AttentionMixin:
    def _add_attention(self, conv_names, out_channels, aw, aa, act_attention, act_reduction):
        """aw: None or AWConv2d kwargs; aa: None or to_aa_conv kwargs (its conv branch is AW
        when aw is set too). Both apply to the 3x3 convs ``conv_names``."""
        for name in conv_names:
            conv = getattr(self, name)
            if aa is not None:
                setattr(self, name, to_aa_conv(conv, aw=aw, **aa))
            elif aw is not None:
                setattr(self, name, to_aw_conv(conv, **aw))
        self.act_attention = create_act_attention(act_attention, out_channels, act_reduction)

    def _residual(self, out, x):
        if self.act_attention is not None:
            out = self.act_attention(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


class AttentionBottleneckBlock(_AttentionMixin, BottleneckBlock):
    """Detectron2's BottleneckBlock; conv2 (the 3x3) may be AW and/or AA, the branch output
    SE/CBAM."""

    def __init__(self, in_channels, out_channels, *, aw=None, aa=None, act_attention="",
                 act_reduction=16, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self._add_attention(("conv2",), out_channels, aw, aa, act_attention, act_reduction)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        return self._residual(self.conv3(out), x)


class AttentionBasicBlock(_AttentionMixin, BasicBlock):
    """Detectron2's BasicBlock (R-18/34); both 3x3 convs may be AW and/or AA, the output
    SE/CBAM."""

    def __init__(self, in_channels, out_channels, *, aw=None, aa=None, act_attention="",
                 act_reduction=16, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self._add_attention(("conv1", "conv2"), out_channels, aw, aa, act_attention,
                            act_reduction)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        return self._residual(self.conv2(out), x)
