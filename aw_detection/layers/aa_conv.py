"""Attention-augmented convolution.

Bello, Zoph, Vaswani, Shlens, Le, "Attention Augmented Convolutional Networks", ICCV 2019,
arXiv 1904.09925: ``concat[conv(x) with F_out - d_v filters, MHA(x)]`` where the multi-head
self-attention over all positions adds 2-D relative position logits to the content logits.
With ``aw`` the convolutional branch is an AWConv2d (Zhu et al. 2021's AA + AW combination).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .aw_conv import AWConv2d
from .relative_logits import relative_logits_2d

__all__ = ["AAConv2d", "MultiHeadRelativeAttention", "aa_channels"]


def aa_channels(out_channels, heads, kappa=0.2, nu=0.1, min_key_channels_per_head=20):
    """(key_channels, value_channels) for the paper's kappa = d_k / F_out, nu = d_v / F_out,
    rounded up to a multiple of ``heads``, keys with at least 20 channels per head."""
    per_head_k = max(math.ceil(kappa * out_channels / heads), min_key_channels_per_head)
    per_head_v = max(math.ceil(nu * out_channels / heads), 1)
    return per_head_k * heads, per_head_v * heads


class MultiHeadRelativeAttention(nn.Module):
    """The attention branch: 1x1 qkv, per-head softmax(q k^T + S_H + S_W) v, 1x1 output.

    The relative tables (2 * max_size - 1, d_k / heads) are shared by the heads of the layer
    and initialised N(0, (d_k / heads)^-1/2), as in the paper's code. ``fused`` uses PyTorch's
    scaled_dot_product_attention with the relative logits as an additive mask.
    """

    def __init__(self, in_channels, key_channels, value_channels, heads, max_size, fused=True):
        super().__init__()
        for name, value in (("key_channels", key_channels), ("value_channels", value_channels)):
            if value % heads:
                raise ValueError(f"AAConv2d: heads={heads} must divide {name}={value}")
        self.heads, self.key_channels, self.value_channels = heads, key_channels, value_channels
        self.max_size = max_size
        self.fused = fused
        # Swappable for relative_logits_2d_naive, the (HW, HW, d) reference (benchmarks).
        self.relative_logits = relative_logits_2d
        head_dim = key_channels // heads
        self.qkv = nn.Conv2d(in_channels, 2 * key_channels + value_channels, 1)
        self.proj = nn.Conv2d(value_channels, value_channels, 1)
        self.rel_h = nn.Parameter(torch.randn(2 * max_size - 1, head_dim) * head_dim ** -0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * max_size - 1, head_dim) * head_dim ** -0.5)

    def forward(self, x):
        n, _, h, w = x.shape
        if max(h, w) > self.max_size:
            raise ValueError(
                f"AAConv2d: attention map {h}x{w} exceeds max_size={self.max_size} (the relative "
                f"tables' limit); raise max_size (MODEL.AA.MAX_SIZE) or use smaller inputs"
            )
        q, k, v = self.qkv(x).split([self.key_channels, self.key_channels, self.value_channels], 1)
        # (n, heads, HW, d) per tensor
        q, k, v = (t.reshape(n, self.heads, -1, h * w).transpose(2, 3) for t in (q, k, v))
        q = q * (self.key_channels // self.heads) ** -0.5
        rel = self.relative_logits(q.reshape(n, self.heads, h, w, -1), self.rel_h, self.rel_w)
        if self.fused:
            # q is already scaled: scale=1 keeps the logits q.k + S_H + S_W.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=rel.to(q.dtype), scale=1.0)
        else:
            out = torch.softmax(q @ k.transpose(2, 3) + rel, dim=-1) @ v
        return self.proj(out.transpose(2, 3).reshape(n, self.value_channels, h, w))


class AAConv2d(nn.Module):
    """Attention-augmented convolution with a ``stride``-pooled attention input.

    Submodules: ``conv`` (``out_channels - value_channels`` filters; an AWConv2d when ``aw`` is
    true or a dict of AWConv2d keyword arguments), ``attention_branch``, ``norm`` and
    ``activation`` applied to the concatenation (as detectron2.layers.Conv2d does).
    ``key_channels`` / ``value_channels`` default to :func:`aa_channels` (kappa=0.2, nu=0.1).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, *, heads=8,
                 key_channels=None, value_channels=None, max_size=64, aw=False, dilation=1,
                 norm=None, activation=None, fused=True):
        super().__init__()
        default_k, default_v = aa_channels(out_channels, heads)
        key_channels = key_channels or default_k
        value_channels = value_channels or default_v
        if value_channels >= out_channels:
            raise ValueError(
                f"AAConv2d: value_channels={value_channels} must be < out_channels="
                f"{out_channels} (the convolution keeps out_channels - value_channels filters)"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = _pair(stride)
        kernel_size, dilation = _pair(kernel_size), _pair(dilation)
        padding = tuple(d * (k // 2) for k, d in zip(kernel_size, dilation))
        conv_channels = out_channels - value_channels
        if aw:
            self.conv = AWConv2d(in_channels, conv_channels, kernel_size, stride, padding,
                                 dilation, **(aw if isinstance(aw, dict) else {}))
        else:
            self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size, stride, padding,
                                  dilation, bias=False)
        self.attention_branch = MultiHeadRelativeAttention(
            in_channels, key_channels, value_channels, heads, max_size, fused)
        self.norm = norm
        self.activation = activation

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AAConv2d expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        conv = self.conv(x)
        if self.stride != (1, 1):
            # ceil_mode keeps the conv branch's ceil(H / stride) for odd maps.
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True, count_include_pad=False)
        out = torch.cat([conv, self.attention_branch(x).to(conv.dtype)], dim=1)
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out
