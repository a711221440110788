"""AW-convolution: attention with the shape of the convolution kernel.

Zhu, Hofstee, Lee, Al-Ars, "An Attention Module for Convolutional Neural Networks",
ICANN 2021, arXiv 2108.08205.

Each sample n gets an attention map A[n] with the shape of the kernel K, and the layer computes
``conv2d(I[n], (1 + A[n]) * K)``, the modulated kernel being formed as ``K + K * A[n]``. The
generator widths are our choice, see README "Design choices".

The per-sample convolution has several exact formulations (``PATHS``); ``select_path`` picks
one per call and ``AWConv2d.path`` forces one (tests, benchmarks):

- ``plain``: N = 1, one convolution with the sample's kernel;
- ``per_sample``: one convolution per sample on views of the input, outputs concatenated;
- ``grouped``: one convolution with the batch folded into the groups;
- ``patches``: no per-sample kernels: each sample's input patches (unfold) are multiplied by
  1 + A and contracted with K. Its tensors scale with the map, the kernels' with the kernel,
  so it is the cheaper one on small maps with few attention rows (AW-lite at res5 of a 64-px
  classifier: ``select_path``).
- ``any_batch``: every sample's kernel applied to every sample, the diagonal kept. It never
  names the batch size, so a ``torch.jit.trace`` (which freezes Python control flow and the
  ``groups`` argument) or a ``torch.export`` with a dynamic batch stays correct at any N.
  It costs one plain convolution at N = 1 and N times the FLOPs at N > 1. ONNX export is the
  exception: ONNX's Conv needs static kernel shapes, so there the batch is fixed at export
  (``per_sample``) and onnxruntime refuses another one.

The modulated kernels K + K * A are formed by plain tensor ops in traces and exports, and
under autograd by ``_Modulate``, the same ops with a backward written for memory traffic.
"""
import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

__all__ = ["AWConv2d", "AttentionGenerator", "PATHS", "aw_conv2d_reference", "patches_size",
           "select_path", "set_expand_dtype", "traced_path"]

PATHS = ("plain", "per_sample", "grouped", "patches", "any_batch")

# The eager formulation for N > 1, per device type, when training (autograd records the call)
# and in inference; edit here to change the policy. CPU (oneDNN, 2 threads, two machines of one
# kind; README "AWConv2d formulations"): under autograd per-sample convolutions, whose
# forward+backward was the faster at res3 on both (1.07x vs 1.11x and 1.11x vs 1.25x of
# nn.Conv2d), and which read a channels_last input without a copy. In inference the grouped
# convolution: one call, 1.05-1.08x at res4 N = 2 on the second machine where per-sample ones
# took 1.07x in some processes and 1.15x in others (the first machine measured per-sample
# forward faster at res3, 0.87x vs 0.97x; both are within the 1.10x goal there).
# CUDA: the grouped convolution, one cuDNN call (the fastest or within a few % on an H100).
BATCHED_PATH = {"cpu": {"train": "per_sample", "inference": "grouped"},
                "cuda": {"train": "grouped", "inference": "grouped"}}

# CPU inference pads the float32 ``expand`` product from 8-15 columns (N * taps) to this many
# where its weight is at least half the kernel's size (AW-full): MKL's product with 9 columns
# (one sample, 3x3) took 2-4x as long as with 16 on the development CPU (res4: 0.83 vs
# 0.36 ms). The padded A is read strided by the modulation, which costs more than it saves
# for AW-lite's small products (res5 G = 8: 1.06 vs 0.66 ms); fewer than 8 columns (1x1
# kernels) would more than double the product. README "AWConv2d formulations".
MIN_PRODUCT_COLUMNS = 16

# The formulation inside torch.jit.trace and for a symbolic batch (torch.export with a dynamic
# batch dimension): the only one that stays correct for every N. ``traced_path`` changes it
# for traces that are never run at another batch size (e.g. fvcore's FLOP count).
_TRACE_PATH = ["any_batch"]


# On CPU, "patches" replaces the batched path where its modulated patches are at most this
# fraction of the modulated kernels' size (measured, README "AWConv2d formulations": 1/8 is 3.8x
# faster than per-sample kernels forward+backward, 1 is 1.6x slower).
PATCHES_BELOW = 0.25


def select_path(batch, device_type, patches_size=None, train=False):
    """The exact formulation AWConv2d runs in eager mode for ``batch`` samples on
    ``device_type`` ("cpu", "cuda", ...); ``train``: autograd records the call.
    ``patches_size``: the "patches" form's tensors relative to the per-sample kernels
    (``patches_size`` of the layer and input). Traces and symbolic batches use "any_batch"."""
    if batch == 1:
        return "plain"
    path = BATCHED_PATH.get(device_type, {}).get("train" if train else "inference", "grouped")
    if device_type == "cpu" and patches_size is not None and patches_size <= PATCHES_BELOW:
        return "patches"
    return path


@contextlib.contextmanager
def traced_path(path):
    """Within the block, traces of AWConv2d use ``path`` instead of "any_batch". The trace
    then holds the batch size it was made with: use it only for traces that are never run
    (FLOP counting) or never see another batch size."""
    if path not in PATHS:
        raise ValueError(f"traced_path: unknown path {path!r}, expected one of {PATHS}")
    saved = _TRACE_PATH[0]
    _TRACE_PATH[0] = path
    try:
        yield
    finally:
        _TRACE_PATH[0] = saved


class AttentionGenerator(nn.Module):
    """pooled (N, C_in, kh, kw) -> 1x1 conv -> ReLU -> 1x1 conv -> (N, C_rows, kh, kw).

    ``reduce`` and ``expand`` are 1x1 ``nn.Conv2d`` (their checkpoint names and shapes), but
    they are applied as matrix products over the N * kh * kw (sample, tap) positions: oneDNN
    would re-lay out the large ``expand`` weight (C_out * C_in/g rows for AW-full) at every
    call. ``expand`` writes A as (rows, sample, tap), the layout in which the modulation and
    its backward read and write A contiguously, tap by tap.
    """

    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, out_channels, 1)

    def hidden(self, pooled):
        """ReLU(reduce(pooled)), one row per (sample, tap): (N * kh * kw, hidden)."""
        n, c = pooled.shape[:2]
        taps = pooled.reshape(n, c, -1).transpose(1, 2).reshape(-1, c)
        return F.relu(F.linear(taps, self.reduce.weight.flatten(1), self.reduce.bias))

    def rows(self, hidden, out=None):
        """expand(hidden): (C_rows, N * kh * kw), in the dtype ``expand`` is stored in."""
        hidden = hidden.to(self.expand.weight.dtype)
        return torch.addmm(self.expand.bias[:, None], self.expand.weight.flatten(1), hidden.t(),
                           out=out)

    def forward(self, pooled):
        n, _, kh, kw = pooled.shape
        return self.rows(self.hidden(pooled)).view(-1, n, kh, kw).transpose(0, 1)


# CPU inference writes the generator's rows and the modulated kernels into scratch tensors
# reused across calls and layers: a fresh tensor of a few MB is page-faulted again on every
# call (glibc hands such blocks back to the kernel). Per thread, so concurrent callers never
# share one; within a thread the layers run one after another on CPU (synchronous) and each
# consumes its kernels before returning. Larger requests are allocated fresh, so a large
# batch does not pin its kernels' memory.
SCRATCH_LIMIT_BYTES = 64 * 2 ** 20
_scratch = threading.local()


def _scratch_tensor(slot, shape, like, reuse=True):
    """An uninitialised tensor of ``shape`` on ``like``'s device and dtype: from this thread's
    scratch ``slot`` when ``reuse``, on CPU and small enough, else fresh."""
    numel = 1
    for size in shape:
        numel *= size
    if (not reuse or like.device.type != "cpu"
            or numel * like.element_size() > SCRATCH_LIMIT_BYTES):
        return like.new_empty(shape)
    slots = _scratch.__dict__
    buf = slots.get(slot)
    if buf is None or buf.dtype != like.dtype or buf.numel() < numel:
        # A normal tensor, also under inference_mode, so that it serves outside it too.
        with torch.inference_mode(False):
            buf = slots[slot] = like.new_empty(numel)
    return buf[:numel].view(shape)


def _attention_view(rows, channels_per_group, n, taps):
    """(G * C_in/g, N * taps) rows viewed as (N, G, 1, C_in/g, taps), no copy."""
    return rows.view(-1, 1, channels_per_group, n, taps).permute(3, 0, 1, 2, 4)


def _modulate(weight, rows, n, out=None):
    """K + K * A for every sample: (N, C_out, C_in/g, kh, kw) from the generator's rows.
    With ``out`` (contiguous, no autograd) the result is written sample-major in one pass."""
    c_out, cpg, kh, kw = weight.shape
    groups = rows.shape[0] // cpg
    k = weight.reshape(groups, c_out // groups, cpg, kh * kw)
    a = _attention_view(rows, cpg, n, kh * kw)
    if out is None:
        # k's leading 1 makes TensorIterator lay the result out sample-major at N = 1 (traces,
        # exports): with k as (G, ...) it picks A's transposed layout and the reshape copies.
        return torch.addcmul(k.unsqueeze(0), k, a).reshape(n, c_out, cpg, kh, kw)
    torch.addcmul(k, k, a, out=out.view(n, groups, c_out // groups, cpg, kh * kw))
    return out


class _Modulate(torch.autograd.Function):
    """K + K * A with A = expand(hidden), for training: the forward writes the kernels
    sample-major in one pass, the backward makes one pass per sample for the gradient of K and
    writes the gradient of A straight into the row layout of the ``expand`` product.
    Same math as ``_modulate`` under autograd (tested against it)."""

    @staticmethod
    def forward(ctx, weight, hidden, expand_weight, expand_bias, n):
        rows = torch.addmm(expand_bias[:, None], expand_weight.flatten(1), hidden.t())
        out = _modulate(weight, rows, n, out=weight.new_empty((n, *weight.shape)))
        ctx.save_for_backward(weight, hidden, expand_weight, rows)
        ctx.n = n
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, hidden, expand_weight, rows = ctx.saved_tensors
        n = ctx.n
        c_out, cpg, kh, kw = weight.shape
        groups = rows.shape[0] // cpg
        grad = grad.reshape(n, groups, c_out // groups, cpg, kh * kw)
        a = _attention_view(rows, cpg, n, kh * kw)
        grad_weight = grad_hidden = grad_expand_weight = grad_expand_bias = None
        if ctx.needs_input_grad[0]:  # sum over samples of grad * (1 + A)
            grad_weight = torch.addcmul(grad[0], grad[0], a[0])
            for i in range(1, n):
                grad_weight.add_(grad[i]).addcmul_(grad[i], a[i])
            grad_weight = grad_weight.view_as(weight)
        # Scratch: grad_rows is consumed within this backward (CPU autograd runs the layers'
        # backwards one after another in the calling thread).
        grad_rows = _scratch_tensor("grad_rows", rows.shape, rows)
        target = _attention_view(grad_rows, cpg, n, kh * kw)
        k = weight.reshape(groups, c_out // groups, cpg, kh * kw)
        if c_out == groups:  # AW-full: one output channel per row, nothing to sum
            torch.mul(grad, k, out=target)
        else:
            torch.sum(grad * k, dim=2, keepdim=True, out=target)
        # The operand orders are the fast ones of those measured with MKL.
        if ctx.needs_input_grad[1]:
            grad_hidden = grad_rows.t() @ expand_weight.flatten(1)
        if ctx.needs_input_grad[2]:
            grad_expand_weight = (grad_rows @ hidden).view_as(expand_weight)
        if ctx.needs_input_grad[3]:
            grad_expand_bias = grad_rows.sum(1)
        return grad_weight, grad_hidden, grad_expand_weight, grad_expand_bias, None


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


def _unit_layout(layer):
    """(block, units): output channels in blocks that share one attention row and one conv
    group; the "patches" form modulates one copy of the patches per block."""
    block = math.gcd(layer.out_channels // layer.attention_groups,
                     layer.out_channels // layer.groups)
    return block, layer.out_channels // block


def _output_size(layer, x):
    return tuple((size + 2 * pad - dil * (k - 1) - 1) // stride + 1
                 for size, pad, dil, k, stride in zip(x.shape[2:], layer.padding, layer.dilation,
                                                      layer.kernel_size, layer.stride))


def patches_size(layer, x):
    """Size of the "patches" form's modulated patches (N, units, C_in/g * taps, H' * W')
    relative to the modulated kernels (N, C_out, C_in/g * taps)."""
    h, w = _output_size(layer, x)
    return _unit_layout(layer)[1] * h * w / layer.out_channels


def _per_unit(t, channels_per_entry, block, units):
    """(N, m, ...) entries of ``channels_per_entry`` output channels each -> (N, units, ...),
    the entry of each block of output channels (a view where it can be)."""
    if t.shape[1] == units:
        return t
    if t.shape[1] == 1:
        return t.expand(t.shape[0], units, *t.shape[2:])
    index = torch.arange(units, device=t.device) * block // channels_per_entry
    return t[:, index]


def _conv_patches(layer, x, rows):
    """``rows``: (N, G, C_in/g * taps) attention rows. out[n, o] = sum_j K[o, j] *
    (1 + A[n, row(o), j]) * patches[n, group(o), j]: the same sums as the convolution with
    the modulated kernel, without forming it."""
    n = x.shape[0]
    block, units = _unit_layout(layer)
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    cols = cols.view(n, layer.groups, -1, cols.shape[-1])  # (N, g, C_in/g * taps, P)
    cols = _per_unit(cols, layer.out_channels // layer.groups, block, units)
    a = _per_unit(rows, layer.out_channels // layer.attention_groups, block, units)
    patches = torch.addcmul(cols, cols, a.unsqueeze(-1))  # (N, units, J, P)
    # einsum runs one matrix product per unit over all samples (matmul would broadcast the
    # weight to every sample: the per-sample kernels again).
    out = torch.einsum("ubj,nujp->nubp", layer.weight.reshape(units, block, -1), patches)
    out = out.reshape(n, layer.out_channels, *_output_size(layer, x))
    if layer.bias is not None:
        out = out + layer.bias.view(1, -1, 1, 1)
    return out.contiguous(memory_format=_memory_format(x))


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
        path: None (``select_path`` decides per call) or one of ``PATHS`` to force a
            formulation; also settable as the ``path`` attribute.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, *, reduction=16, attention_groups=0, norm=None,
                 activation=None, path=None):
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

    def _pooled(self, x, dtype):
        if torch.onnx.is_in_onnx_export():
            pooled = _adaptive_avg_pool2d_onnx(x, self.kernel_size)
        else:
            pooled = F.adaptive_avg_pool2d(x, self.kernel_size)
        return pooled if dtype is None else pooled.to(dtype)

    def _attention_rows(self, x):
        """(N, G, in_channels // groups, kh, kw), float32 under autocast."""
        with self._float32_under_autocast(x) as dtype:
            rows = self.generator(self._pooled(x, dtype)).to(dtype or self.weight.dtype)
        return rows.reshape(x.shape[0], self.attention_groups, -1, *self.kernel_size)

    def attention(self, x):
        """A, shaped (N, out_channels, in_channels // groups, kh, kw); float32 under autocast."""
        self._check_input(x)
        rows = self._attention_rows(x)
        return rows.repeat_interleave(self.out_channels // self.attention_groups, dim=1)

    def _refuse_training_converted_expand(self):
        expand, weight = self.generator.expand.weight, self.weight
        if expand.dtype != weight.dtype:
            raise RuntimeError(
                f"AWConv2d: generator.expand is stored in {expand.dtype} (an "
                "inference option, see set_expand_dtype); set it back to "
                f"{weight.dtype} to train, or run under torch.no_grad()"
            )

    def modulated_weight(self, x, scratch=False):
        """(1 + A[n]) * K for every sample: (N, out_channels, in_channels // groups, kh, kw),
        float32 under autocast. With ``scratch`` (forward's own calls) the result may live in
        this thread's scratch memory, overwritten by the next AWConv2d call."""
        n = x.shape[0]
        if torch.onnx.is_in_onnx_export():
            # ONNX's Conv needs each kernel's shape; a symbolic batch in the reshapes would
            # leave it unknown. The file's batch is then fixed (another one is refused).
            n = int(n)
        with self._float32_under_autocast(x) as dtype:
            hidden = self.generator.hidden(self._pooled(x, dtype))
            weight = self.weight if dtype is None else self.weight.to(dtype)
            expand = self.generator.expand
            if torch.jit.is_tracing() or torch.compiler.is_compiling():
                # Plain differentiable ops: no out= and no Python autograd.Function in a graph.
                return _modulate(weight, self.generator.rows(hidden), n)
            if self._records_grad(x):
                self._refuse_training_converted_expand()
                return _Modulate.apply(weight, hidden, expand.weight, expand.bias, n)
            with torch.no_grad():
                # Only forward() may use scratch: its kernels are consumed at once.
                cols = hidden.shape[0]
                if (x.device.type == "cpu" and expand.weight.dtype == torch.float32
                        and MIN_PRODUCT_COLUMNS // 2 <= cols < MIN_PRODUCT_COLUMNS
                        and 2 * expand.weight.numel() >= weight.numel()):
                    # Zero rows of hidden: their columns of the product are not read.
                    hidden = F.pad(hidden, (0, 0, 0, MIN_PRODUCT_COLUMNS - cols))
                rows_shape = (expand.weight.shape[0], hidden.shape[0])
                rows = self.generator.rows(
                    hidden, out=_scratch_tensor("rows", rows_shape, expand.weight, scratch))
                kernels = _scratch_tensor("kernels", (n, *weight.shape), weight, scratch)
                return _modulate(weight, rows[:, :cols], n, out=kernels)

    def conv_path(self, x):
        """The formulation ``forward(x)`` uses (see the module docstring)."""
        n = x.shape[0]
        symbolic = torch.jit.is_tracing() or not isinstance(n, int)
        if torch.onnx.is_in_onnx_export() and self.path is None:
            return "per_sample"  # static kernel shapes, batch fixed (see modulated_weight)
        if self.path is None:
            if symbolic:
                return _TRACE_PATH[0]
            return select_path(n, x.device.type, patches_size(self, x), self._records_grad(x))
        if symbolic and self.path != "any_batch":
            raise RuntimeError(
                f"AWConv2d.path={self.path!r} would freeze the batch size into this trace or "
                "export (a wrong result at another batch size); set path=None before tracing"
            )
        if self.path == "plain" and n != 1:
            raise ValueError(f"AWConv2d.path='plain' needs a batch of 1, got {n}")
        return self.path

    def forward(self, x):
        self._check_input(x)
        path = self.conv_path(x)
        if path == "patches":
            if torch.is_grad_enabled():
                self._refuse_training_converted_expand()
            out = _conv_patches(self, x, self._attention_rows(x).flatten(2))
        else:
            out = _CONVS[path](self, x, self.modulated_weight(x, scratch=True))
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


def set_expand_dtype(module, dtype):
    """Store the ``generator.expand`` weights of every AWConv2d in ``module`` in ``dtype``;
    returns how many were converted. ``torch.bfloat16`` halves the memory and the weight
    traffic of AW-full's generator (its ``expand`` weight is C_out * C_in/g * hidden, 3.5x
    the kernel at res5) at the cost of A rounded to bfloat16 (README "AWConv2d formulations").
    An inference option: training refuses a converted layer; ``torch.float32`` converts back.
    """
    layers = [m for m in module.modules() if isinstance(m, AWConv2d)]
    for layer in layers:
        layer.generator.expand.to(dtype)
    return len(layers)


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
