"""AW-convolution: attention with the shape of the convolution kernel.

Zhu, Hofstee, Lee, Al-Ars, "An Attention Module for Convolutional Neural Networks",
ICANN 2021, arXiv 2108.08205.

Each sample n gets an attention map A[n] with the shape of the kernel K, and the layer computes
``conv2d(I[n], (1 + A[n]) * K)``. The generator widths are our choice (docs/DESIGN.md).

The per-sample convolution has several exact formulations (``PATHS``); ``AWConv2d.conv_path``
picks one per call and ``AWConv2d.path`` forces one (tests, benchmarks):

- ``plain``: N = 1, one convolution with the sample's kernel;
- ``per_sample``: one convolution per sample on views of the input, outputs concatenated;
- ``grouped``: one convolution with the batch folded into the groups;
- ``any_batch``: every sample's kernel applied to every sample, the diagonal kept. It never
  names the batch size, so a ``torch.jit.trace`` (which freezes Python control flow and the
  ``groups`` argument) or a ``torch.export`` with a dynamic batch stays correct at any N.
  It costs one plain convolution at N = 1 and N times the FLOPs at N > 1. ONNX export is the
  exception: ONNX's Conv needs static kernel shapes, so there the batch is fixed at export
  (``per_sample``) and onnxruntime refuses another one;
- ``triton``: the fused Triton kernel of :mod:`aw_conv_triton` (CUDA), which never writes the
  modulated kernels K + K * A[n] to memory; the other four form them first.
"""
import contextlib
import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["AWConv2d", "AttentionGenerator", "KERNELS", "PATHS", "TRITON_FASTER",
           "aw_conv2d_reference", "select_path", "traced_path"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _log_once(message):
    logger.warning(message)

PATHS = ("plain", "per_sample", "grouped", "any_batch", "triton")

# MODEL.AW.KERNEL: "cudnn" runs the torch formulations (cuDNN / oneDNN convolutions);
# "triton" the fused kernel on CUDA; "auto" the fused kernel on CUDA where it was measured
# faster (TRITON_FASTER). CPU, traces and exports always run the torch formulations.
KERNELS = ("auto", "cudnn", "triton")

# The eager formulation for N > 1, per device type, when training (autograd records the call)
# and in inference (docs/BENCHMARKS.md). CPU (oneDNN, 2 threads): under autograd per-sample
# convolutions, the faster forward+backward at res3, which read a channels_last input without
# a copy; in inference the grouped convolution, one call. CUDA: the grouped convolution, one
# cuDNN call (the fastest of the torch formulations, or within a few %, on an H100).
BATCHED_PATH = {"cpu": {"train": "per_sample", "inference": "grouped"},
                "cuda": {"train": "grouped", "inference": "grouped"}}

# The layer shapes, as ``triton_shape`` names them, for which a GPU benchmark measured the fused
# kernel faster than BATCHED_PATH; "auto" uses it only there. Empty until one has
# (tools/benchmark.py --preset gpu): the fused kernel is opt-in (MODEL.AW.KERNEL triton).
TRITON_FASTER = frozenset()

# The formulation inside torch.jit.trace and for a symbolic batch (torch.export with a dynamic
# batch dimension): the only one that stays correct for every N. ``traced_path`` changes it
# for traces that are never run at another batch size (e.g. fvcore's FLOP count).
_TRACE_PATH = ["any_batch"]


def select_path(batch, device_type, train=False):
    """The torch formulation AWConv2d runs in eager mode for ``batch`` samples on
    ``device_type`` ("cpu", "cuda", ...); ``train``: autograd records the call."""
    if batch == 1:
        return "plain"
    return BATCHED_PATH.get(device_type, {}).get("train" if train else "inference", "grouped")


@contextlib.contextmanager
def traced_path(path):
    """Within the block, traces of AWConv2d use ``path`` instead of "any_batch". The trace
    then holds the batch size it was made with: use it only for traces that are never run
    (FLOP counting) or never see another batch size."""
    if path not in PATHS or path == "triton":
        raise ValueError(f"traced_path: unknown path {path!r}, expected one of {PATHS[:-1]}")
    saved = _TRACE_PATH[0]
    _TRACE_PATH[0] = path
    try:
        yield
    finally:
        _TRACE_PATH[0] = saved


def _triton():
    """The fused kernel's module, or None where Triton is not installed."""
    try:
        from . import aw_conv_triton
    except ImportError:
        return None
    return aw_conv_triton


class AttentionGenerator(nn.Module):
    """pooled (N, C_in, kh, kw) -> 1x1 conv -> ReLU -> 1x1 conv -> (N, C_rows, kh, kw).

    ``reduce`` and ``expand`` are 1x1 ``nn.Conv2d`` (their checkpoint names and shapes), but
    they are applied as matrix products over the N * kh * kw (sample, tap) positions: oneDNN
    would re-lay out the large ``expand`` weight (C_out * C_in/g rows for AW-full) at every
    call. ``rows`` writes A as (row, sample, tap), so each sample's taps are contiguous.
    """

    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, out_channels, 1)

    def rows(self, pooled):
        """(C_rows, N * kh * kw): column n * taps + t holds sample n's tap t."""
        n, c = pooled.shape[:2]
        taps = pooled.reshape(n, c, -1).transpose(1, 2).reshape(-1, c)
        hidden = F.relu(F.linear(taps, self.reduce.weight.flatten(1), self.reduce.bias))
        return torch.addmm(self.expand.bias[:, None], self.expand.weight.flatten(1), hidden.t())

    def forward(self, pooled):
        n, _, kh, kw = pooled.shape
        return self.rows(pooled).view(-1, n, kh, kw).transpose(0, 1)


def _row_view(rows, channels_per_group, n, kh, kw):
    """(G * C_in/g, N * taps) rows viewed as (N, G, C_in/g, kh, kw), no copy."""
    return rows.view(-1, channels_per_group, n, kh, kw).permute(2, 0, 1, 3, 4)


def _modulate(weight, rows, n):
    """K + K * A for every sample: (N, C_out, C_in/g, kh, kw) from the generator's rows."""
    c_out, cpg, kh, kw = weight.shape
    groups = rows.shape[0] // cpg
    k = weight.reshape(groups, c_out // groups, cpg, kh * kw)
    a = _row_view(rows, cpg, n, kh, kw).flatten(3).unsqueeze(2)  # (N, G, 1, C_in/g, taps)
    # k's leading 1 makes TensorIterator lay the result out sample-major at N = 1 (traces,
    # exports): with k as (G, ...) it picks A's transposed layout and the reshape copies.
    return torch.addcmul(k.unsqueeze(0), k, a).reshape(n, c_out, cpg, kh, kw)


def _window_means(size, bins, like):
    """(bins, size) matrix averaging adaptive pooling's windows [floor(i * size / bins),
    ceil((i + 1) * size / bins)), built from ``size`` at run time (a traced value in exports)."""
    pos = torch.arange(size, device=like.device)
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def _adaptive_avg_pool2d_onnx(x, output_size):
    """F.adaptive_avg_pool2d as two averaging matrix products, for ONNX: the TorchScript ONNX
    exporter can only write adaptive pooling to a non-1 size when the input size is static,
    which would fix the exported model's image size."""
    h, w = x.shape[-2:]
    rows = _window_means(h, output_size[0], x)
    cols = _window_means(w, output_size[1], x)
    return torch.matmul(torch.matmul(rows, x), cols.t())


def _memory_format(x):
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _conv_plain(layer, x, weight):
    return F.conv2d(x, weight[0], layer.bias, layer.stride, layer.padding, layer.dilation,
                    layer.groups)


def _conv_per_sample(layer, x, weight):
    # split/unbind give views in both memory formats (cat keeps channels_last), and their
    # backward is one cat/stack, where indexing would allocate a zero-filled copy per sample.
    return torch.cat([F.conv2d(sample, kernel, layer.bias, layer.stride, layer.padding,
                               layer.dilation, layer.groups)
                      for sample, kernel in zip(x.split(1), weight.unbind(0))])


def _conv_grouped(layer, x, weight):
    n, _, h, w = x.shape
    bias = layer.bias.repeat(n) if layer.bias is not None else None
    # A channels_last input is copied here: (1, N*C, H, W) has no channels_last view.
    out = F.conv2d(x.reshape(1, n * layer.in_channels, h, w),
                   weight.reshape(n * layer.out_channels, *weight.shape[2:]),
                   bias, layer.stride, layer.padding, layer.dilation, layer.groups * n)
    out = out.view(n, layer.out_channels, *out.shape[2:])
    return out.contiguous(memory_format=_memory_format(x))


def _conv_any_batch(layer, x, weight):
    n, g = x.shape[0], layer.groups
    # Output channels group-major (conv group, sample, channel), as F.conv2d's groups expect.
    kernels = weight.unflatten(1, (g, -1)).transpose(0, 1).flatten(0, 2)
    out = F.conv2d(x, kernels, None, layer.stride, layer.padding, layer.dilation, g)
    out = out.unflatten(1, (g, n, -1)).diagonal(0, 0, 2)  # (g, C_out/g, H', W', N)
    out = out.permute(4, 0, 1, 2, 3).flatten(1, 2).contiguous(memory_format=_memory_format(x))
    return out if layer.bias is None else out + layer.bias.view(1, -1, 1, 1)


_CONVS = {"plain": _conv_plain, "per_sample": _conv_per_sample, "grouped": _conv_grouped,
          "any_batch": _conv_any_batch}


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
        kernel: one of ``KERNELS`` (MODEL.AW.KERNEL); also the ``kernel`` attribute.
        path: None (``conv_path`` decides per call) or one of ``PATHS`` to force a
            formulation; also settable as the ``path`` attribute.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, *, reduction=16, attention_groups=0, norm=None,
                 activation=None, kernel="auto", path=None):
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
        if kernel not in KERNELS:
            raise ValueError(f"AWConv2d: kernel must be one of {KERNELS}, got {kernel!r}")
        if (kernel == "triton" or path == "triton") and _triton() is None:
            raise ValueError("AWConv2d: the triton kernel needs the triton package "
                             "(pip install triton), or use kernel 'cudnn'")
        if path is not None and path not in PATHS:
            raise ValueError(f"AWConv2d: path must be None or one of {PATHS}, got {path!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.attention_groups = attention_groups
        self.kernel = kernel
        self.path = path

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

    def triton_shape(self):
        """The key of this layer's shape in TRITON_FASTER."""
        rows = "full" if self.attention_groups == self.out_channels else "lite"
        return (self.in_channels, self.out_channels, self.kernel_size, self.stride,
                self.dilation, self.groups, rows)

    def _check_input(self, x):
        if x.dim() != 4:
            raise ValueError(f"AWConv2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"AWConv2d expects {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )

    @contextlib.contextmanager
    def _float32_under_autocast(self, x):
        # The attention is computed in float32 under autocast; only the conv uses its dtype.
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                yield torch.float32
        else:
            yield None

    def _records_grad(self, x):
        """Whether autograd records this call (training): through the input, the kernel or
        the generator."""
        params = (self.weight, *self.generator.parameters())
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))

    def _rows(self, x):
        """The generator's rows (G * C_in/g, N * kh * kw), float32 under autocast."""
        with self._float32_under_autocast(x) as dtype:
            if torch.onnx.is_in_onnx_export():
                pooled = _adaptive_avg_pool2d_onnx(x, self.kernel_size)
            else:
                pooled = F.adaptive_avg_pool2d(x, self.kernel_size)
            return self.generator.rows(pooled if dtype is None else pooled.to(dtype))

    def _attention_rows(self, x):
        """(N, G, in_channels // groups, kh, kw), float32 under autocast."""
        return _row_view(self._rows(x), self.in_channels // self.groups, x.shape[0],
                         *self.kernel_size)

    def attention(self, x):
        """A, shaped (N, out_channels, in_channels // groups, kh, kw); float32 under autocast."""
        self._check_input(x)
        rows = self._attention_rows(x)
        return rows.repeat_interleave(self.out_channels // self.attention_groups, dim=1)

    def modulated_weight(self, x):
        """(1 + A[n]) * K for every sample: (N, out_channels, in_channels // groups, kh, kw),
        float32 under autocast."""
        n = x.shape[0]
        if torch.onnx.is_in_onnx_export():
            # ONNX's Conv needs each kernel's shape; a symbolic batch in the reshapes would
            # leave it unknown. The file's batch is then fixed (another one is refused).
            n = int(n)
        rows = self._rows(x)
        with self._float32_under_autocast(x) as dtype:
            return _modulate(self.weight if dtype is None else self.weight.to(dtype), rows, n)

    def _triton_reason(self, x):
        """Why the fused kernel does not run ``x`` (None when it does, or when it was not
        asked for and the torch formulations run anyway)."""
        if self.kernel == "cudnn" and self.path != "triton":
            return "MODEL.AW.KERNEL is cudnn"
        if self.kernel == "auto" and self.path != "triton" and (
                x.device.type != "cuda" or self.triton_shape() not in TRITON_FASTER):
            return "not measured faster for this device and shape (TRITON_FASTER)"
        if torch.compiler.is_compiling():
            return "torch.compile runs the torch formulations"
        module = _triton()
        return "triton is not installed" if module is None else module.unsupported(
            self._conv_input(x), self.weight)

    def _conv_input(self, x):
        if torch.is_autocast_enabled(x.device.type):
            return x.to(torch.get_autocast_dtype(x.device.type))
        return x

    def conv_path(self, x):
        """The formulation ``forward(x)`` uses (see the module docstring)."""
        n = x.shape[0]
        symbolic = torch.jit.is_tracing() or not isinstance(n, int)
        if torch.onnx.is_in_onnx_export() and self.path is None:
            return "per_sample"  # static kernel shapes, batch fixed (see modulated_weight)
        if self.path is None:
            if symbolic:
                return _TRACE_PATH[0]
            reason = self._triton_reason(x)
            if reason is None:
                return "triton"
            if self.kernel == "triton":
                if x.device.type != "cuda":
                    _log_once(f"MODEL.AW.KERNEL triton: {reason}; {x.device.type} runs the "
                              "torch formulations")
                else:
                    raise RuntimeError(f"AWConv2d: MODEL.AW.KERNEL triton cannot run this "
                                       f"input: {reason}; use MODEL.AW.KERNEL cudnn or auto")
            return select_path(n, x.device.type, self._records_grad(x))
        if symbolic and self.path != "any_batch":
            raise RuntimeError(
                f"AWConv2d.path={self.path!r} would freeze the batch size into this trace or "
                "export (a wrong result at another batch size); set path=None before tracing"
            )
        if self.path == "plain" and n != 1:
            raise ValueError(f"AWConv2d.path='plain' needs a batch of 1, got {n}")
        if self.path == "triton":
            reason = self._triton_reason(x)
            if reason:
                raise RuntimeError(f"AWConv2d.path='triton' cannot run this input: {reason}")
        return self.path

    def forward(self, x):
        self._check_input(x)
        path = self.conv_path(x)
        if isinstance(x.shape[0], int) and x.shape[0] == 0:
            # No samples (a C4 head given no boxes): no attention to form, an empty output.
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                           self.groups)
        elif path == "triton":
            out = _triton().aw_conv2d_triton(self._conv_input(x), self.weight,
                                            self._attention_rows(x), self.stride, self.padding,
                                            self.dilation, self.groups)
            if self.bias is not None:
                out = out + self.bias.view(1, -1, 1, 1).to(out.dtype)
        else:
            out = _CONVS[path](self, x, self.modulated_weight(x))
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
        s += f", attention_groups={self.attention_groups}"
        return s if self.kernel == "auto" else s + f", kernel={self.kernel}"


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
