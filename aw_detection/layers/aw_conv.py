"""AW-convolution: attention with the shape of the convolution kernel.

Zhu, Hofstee, Lee, Al-Ars, "An Attention Module for Convolutional Neural Networks",
ICANN 2021, arXiv 2108.08205.

Each sample n gets an attention map A[n] with the shape of the kernel K, and the layer computes
``conv2d(I[n], (1 + A[n]) * K)``. A batch runs as one grouped convolution with the batch folded
into the groups (or a plain convolution when N = 1). The generator widths are our choice, see
README "Design choices".
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["AWConv2d", "AttentionGenerator", "aw_conv2d_reference"]


class AttentionGenerator(nn.Module):
    """pooled (N, C_in, kh, kw) -> 1x1 conv -> ReLU -> 1x1 conv -> (N, C_rows, kh, kw).

    ``reduce`` and ``expand`` are 1x1 ``nn.Conv2d`` (their checkpoint names and shapes), but
    they are applied as matrix products over the kh*kw taps: oneDNN would re-lay out the
    large ``expand`` weight (C_out * C_in/g rows for AW-full) at every call.
    """

    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, pooled):
        n, _, kh, kw = pooled.shape
        taps = pooled.flatten(2).transpose(1, 2)  # (N, kh*kw, C_in)
        hidden = F.relu(F.linear(taps, self.reduce.weight.flatten(1), self.reduce.bias))
        rows = F.linear(hidden, self.expand.weight.flatten(1), self.expand.bias)
        return rows.transpose(1, 2).reshape(n, -1, kh, kw)


class AWConv2d(nn.Module):
    """Convolution with a per-sample, kernel-shaped attention on its weight.

    ``weight`` and ``bias`` are named and shaped like ``nn.Conv2d``'s and ``norm`` /
    ``activation`` behave like ``detectron2.layers.Conv2d``'s, so a plain conv's checkpoint
    loads unchanged. The generator (``generator.reduce`` / ``generator.expand``) starts with
    a zero ``expand`` layer: a fresh AWConv2d computes exactly the plain convolution.

    Args:
        reduction: generator hidden width is ``max(in_channels // reduction, 8)``.
        attention_groups: number G of distinct attention rows; row r is shared by output
            channels ``[r * C_out / G, (r + 1) * C_out / G)``. 0 means G = out_channels.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, *, reduction=16, attention_groups=0, norm=None,
                 activation=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"AWConv2d: groups={groups} must divide {name}={value}")
        attention_groups = attention_groups or out_channels
        if attention_groups < 0 or out_channels % attention_groups:
            raise ValueError(
                f"AWConv2d: attention_groups must divide out_channels={out_channels} "
                f"(or be 0 for one row per output channel), got {attention_groups}"
            )
        if reduction < 1:
            raise ValueError(f"AWConv2d: reduction must be >= 1, got {reduction}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.attention_groups = attention_groups

        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        hidden = max(in_channels // reduction, 8)
        self.generator = AttentionGenerator(in_channels, hidden,
                                            attention_groups * in_channels // groups)
        self.norm = norm
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self):
        # The weight/bias initialisation of nn.Conv2d; callers (Detectron2 blocks) may re-fill it.
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -fan_in ** -0.5, fan_in ** -0.5)
        # Zero "expand": A = 0, so pretrained plain-conv weights give the plain network.
        nn.init.zeros_(self.generator.expand.weight)
        nn.init.zeros_(self.generator.expand.bias)

    def _check_input(self, x):
        if x.dim() != 4:
            raise ValueError(f"AWConv2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"AWConv2d expects {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )

    def _attention_rows(self, x):
        """The G distinct rows of A, float32 under autocast: (N, G, C_in/groups, kh, kw)."""
        pooled = F.adaptive_avg_pool2d(x, self.kernel_size)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                rows = self.generator(pooled.float())
        else:
            rows = self.generator(pooled)
        return rows.view(x.shape[0], self.attention_groups, -1, *self.kernel_size)

    def attention(self, x):
        """A, shaped (N, out_channels, in_channels // groups, kh, kw)."""
        self._check_input(x)
        rows = self._attention_rows(x)
        return rows.repeat_interleave(self.out_channels // self.attention_groups, dim=1)

    def modulated_weight(self, x):
        """(1 + A[n]) * K for every sample: (N, out_channels, in_channels // groups, kh, kw)."""
        rows = self._attention_rows(x)
        n, g = rows.shape[:2]
        # Broadcast each row over its C_out/G channels instead of materialising the full A.
        weight = self.weight.float() if rows.dtype != self.weight.dtype else self.weight
        weight = weight.view(g, -1, *weight.shape[1:])
        # addcmul = K + K * A in one op; fvcore counts it through aw_detection.layers.flops.
        modulated = torch.addcmul(weight, weight, rows.unsqueeze(2))
        return modulated.view(n, self.out_channels, *weight.shape[2:])

    def forward(self, x):
        self._check_input(x)
        n, _, h, w = x.shape
        weight = self.modulated_weight(x)
        if n == 1:
            out = F.conv2d(x, weight[0], self.bias, self.stride, self.padding, self.dilation,
                           self.groups)
        else:
            bias = self.bias.repeat(n) if self.bias is not None else None
            out = F.conv2d(
                x.reshape(1, n * self.in_channels, h, w),
                weight.reshape(n * self.out_channels, *weight.shape[2:]),
                bias, self.stride, self.padding, self.dilation, self.groups * n,
            )
            out = out.view(n, self.out_channels, *out.shape[2:])
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                out = out.contiguous(memory_format=torch.channels_last)
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", attention_groups={self.attention_groups}"


def aw_conv2d_reference(layer, x):
    """Slow reference for tests: one F.conv2d per sample with A computed per sample."""
    outs = []
    for sample in x.split(1):
        weight = (1 + layer.attention(sample)[0]) * layer.weight
        out = F.conv2d(sample, weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                       layer.groups)
        if layer.norm is not None:
            out = layer.norm(out)
        if layer.activation is not None:
            out = layer.activation(out)
        outs.append(out)
    return torch.cat(outs)
