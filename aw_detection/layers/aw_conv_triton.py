"""Fused AW-convolution (Triton): ``conv2d(x[n], (1 + A[n]) * K)`` without per-sample kernels.

Zhu, Hofstee, Lee, Al-Ars, "An Attention Module for Convolutional Neural Networks", ICANN 2021,
arXiv 2108.08205.

The torch formulations of :mod:`aw_conv` write the modulated kernel ``K + K * A[n]`` of every
sample to memory (N x C_out x C_in/g x kh x kw) and then run one grouped convolution. Each
kernel here is an implicit-GEMM convolution (input patches gathered on the fly, the batch and
the conv groups a grid dimension) that reads a tile of K and the matching tile of A[n] and forms
their product in registers:

- forward: ``out[n] = x[n] * W[n]`` with ``W[n] = K + K * A[n]``;
- input gradient: the transposed convolution of ``dout[n]`` with ``W[n]``, formed the same way;
- kernel and attention gradients: per sample and tap, ``dW[n] = dout[n] x[n]^T`` over the
  pixels, never stored: ``dK += dW[n] + dW[n] * A[n]`` and ``dA[n, row] += sum over the
  row's output channels of dW[n] * K``.

A is given as its G distinct rows, ``(N, G, C_in/g, kh, kw)``; row ``o // (C_out / G)`` serves
output channel o (AW-full: G = C_out). The kernels index the shared row and never expand it.

Precision: products accumulate in float32. Under autocast the input arrives in float16 or
bfloat16; K and A stay float32 and ``K + K * A`` is formed in float32 and rounded once to the
input's dtype for the tensor-core product, as the torch formulations do (they form the kernel
in float32 and autocast rounds it for the convolution). A never passes through float16, so a
small A is not rounded away before it scales K, and ``|K (1 + A)|`` is far from float16's range
limit. The gradients of K and A are float32.

Triton runs these kernels on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``
(the tests). Triton 3.8's interpreter computes ``tl.dot`` of bfloat16 operands wrongly; there
the bfloat16-rounded operands are multiplied in float32, which is what a bfloat16 MMA does.
"""
import contextlib
import os

import torch
import triton
import triton.language as tl

__all__ = ["aw_conv2d_triton", "interpreting", "unsupported"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting():
    """Whether Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(x, weight, rows=None):
    """Why the kernels cannot run these tensors (a sentence), or None when they can."""
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        return f"Triton runs on CUDA tensors (got {x.device.type}; TRITON_INTERPRET=1 runs CPU ones)"
    if x.dtype not in DTYPES:
        return f"input dtype {x.dtype} (supported: float32, float16, bfloat16)"
    if weight.dtype != torch.float32 or (rows is not None and rows.dtype != torch.float32):
        return "K and A must be float32"
    return None


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _forward_kernel(
    x_ptr, k_ptr, a_ptr, out_ptr,
    C_IN, C_OUT, H, W, OH, OW, GROUPS,
    sxn, sxc, sxh, sxw, san, sar, sac, son, soc, soh, sow,
    PER_ROW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # One (pixels x output channels) tile of one sample and conv group; C_IN / C_OUT are the
    # channels per conv group, PER_ROW the output channels per attention row.
    n = tl.program_id(2) // GROUPS
    g = tl.program_id(2) % GROUPS
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    oh, ow = m // OW, m % OW
    m_ok = m < OH * OW
    o = g * C_OUT + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = o < (g + 1) * C_OUT
    x_base = x_ptr + n * sxn + g * C_IN * sxc
    k_base = k_ptr + o[None, :] * (C_IN * KH * KW)
    a_base = a_ptr + n * san + (o // PER_ROW)[None, :] * sar
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(KH * KW):
        ih = oh * SH - PH + (tap // KW) * DH
        iw = ow * SW - PW + (tap % KW) * DW
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = x_base + ih * sxh + iw * sxw
        for c0 in range(0, C_IN, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            c_ok = c < C_IN
            xt = tl.load(x_pix[:, None] + c[None, :] * sxc,
                         mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            w_ok = c_ok[:, None] & o_ok[None, :]
            kt = tl.load(k_base + c[:, None] * (KH * KW) + tap, mask=w_ok, other=0.0)
            at = tl.load(a_base + c[:, None] * sac + tap, mask=w_ok, other=0.0)
            acc = _mma(xt, (kt + kt * at).to(xt.dtype), acc, UPCAST, PRECISION)
    out = out_ptr + n * son + o[None, :] * soc + (oh * soh + ow * sow)[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & o_ok[None, :])


@triton.jit
def _grad_input_kernel(
    dout_ptr, k_ptr, a_ptr, dx_ptr,
    C_IN, C_OUT, H, W, OH, OW, GROUPS,
    sdn, sdc, sdh, sdw, san, sar, sac, sxn, sxc, sxh, sxw,
    PER_ROW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # One (input pixels x input channels) tile: dx[n, c, p] = sum over taps and output
    # channels of dout[n, o, q] * W[n, o, c, tap], q the output pixel the tap maps p to.
    n = tl.program_id(2) // GROUPS
    g = tl.program_id(2) % GROUPS
    p = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ih, iw = p // W, p % W
    p_ok = p < H * W
    c = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C_IN
    d_base = dout_ptr + n * sdn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(KH * KW):
        th = ih + PH - (tap // KW) * DH
        tw = iw + PW - (tap % KW) * DW
        oh, ow = th // SH, tw // SW
        q_ok = (p_ok & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0)
                & (oh < OH) & (ow < OW))
        d_pix = d_base + oh * sdh + ow * sdw
        for o0 in range(0, C_OUT, BLOCK_K):
            o = g * C_OUT + o0 + tl.arange(0, BLOCK_K)
            o_ok = o < (g + 1) * C_OUT
            dt = tl.load(d_pix[:, None] + o[None, :] * sdc,
                         mask=q_ok[:, None] & o_ok[None, :], other=0.0)
            w_ok = o_ok[:, None] & c_ok[None, :]
            kt = tl.load(k_ptr + o[:, None] * (C_IN * KH * KW) + c[None, :] * (KH * KW) + tap,
                         mask=w_ok, other=0.0)
            at = tl.load(a_ptr + n * san + (o // PER_ROW)[:, None] * sar + c[None, :] * sac + tap,
                         mask=w_ok, other=0.0)
            acc = _mma(dt, (kt + kt * at).to(dt.dtype), acc, UPCAST, PRECISION)
    dx = dx_ptr + n * sxn + (g * C_IN + c)[None, :] * sxc + (ih * sxh + iw * sxw)[:, None]
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _grad_weight_kernel(
    dout_ptr, x_ptr, k_ptr, a_ptr, dk_ptr, da_ptr,
    C_IN, C_OUT, H, W, OH, OW, GROUPS, SPLIT, PIXELS_PER_SPLIT, C_BLOCKS,
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, san, sar, sac, sgn,
    PER_ROW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ROW_SUM: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # dW[n, o, c, tap] over one slice of the output pixels for one (o, c) tile and tap, then
    # added into dK (times 1 + A[n]) and into A[n]'s gradient (times K, summed per row).
    tap = tl.program_id(1)
    ob = tl.program_id(0) // C_BLOCKS
    split = tl.program_id(2) % SPLIT
    ng = tl.program_id(2) // SPLIT
    n, g = ng // GROUPS, ng % GROUPS
    o = g * C_OUT + ob * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < (g + 1) * C_OUT
    c = (tl.program_id(0) % C_BLOCKS) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C_IN
    r, s = tap // KW, tap % KW
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    start = split * PIXELS_PER_SPLIT  # PIXELS_PER_SPLIT is a multiple of BLOCK_P
    for p0 in range(start, start + PIXELS_PER_SPLIT, BLOCK_P):
        q = p0 + tl.arange(0, BLOCK_P)
        q_ok = q < OH * OW
        oh, ow = q // OW, q % OW
        ih = oh * SH - PH + r * DH
        iw = ow * SW - PW + s * DW
        x_ok = q_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        dt = tl.load(dout_ptr + n * sdn + o[:, None] * sdc + (oh * sdh + ow * sdw)[None, :],
                     mask=o_ok[:, None] & q_ok[None, :], other=0.0)
        xt = tl.load(x_ptr + n * sxn + (g * C_IN + c)[None, :] * sxc + (ih * sxh + iw * sxw)[:, None],
                     mask=x_ok[:, None] & c_ok[None, :], other=0.0)
        acc = _mma(dt, xt.to(dt.dtype), acc, UPCAST, PRECISION)
    w_ok = o_ok[:, None] & c_ok[None, :]
    k_offsets = o[:, None] * (C_IN * KH * KW) + c[None, :] * (KH * KW) + tap
    kt = tl.load(k_ptr + k_offsets, mask=w_ok, other=0.0)
    rows = o // PER_ROW
    at = tl.load(a_ptr + n * san + rows[:, None] * sar + c[None, :] * sac + tap, mask=w_ok,
                 other=0.0)
    tl.atomic_add(dk_ptr + k_offsets, acc + acc * at, mask=w_ok)
    da = acc * kt  # zero where masked: acc and kt are
    da_base = da_ptr + n * sgn + c * (KH * KW) + tap  # da: contiguous (N, G, C_IN, KH, KW)
    if ROW_SUM == 0:  # one atomic per element (AW-full, or rows that do not align with tiles)
        tl.atomic_add(da_base[None, :] + rows[:, None] * (C_IN * KH * KW), da, mask=w_ok)
    elif ROW_SUM == 1:  # the tile covers whole rows of PER_ROW output channels each
        part = tl.sum(tl.reshape(da, (BLOCK_O // PER_ROW, PER_ROW, BLOCK_C)), axis=1)
        first = (g * C_OUT + ob * BLOCK_O) // PER_ROW
        row = first + tl.arange(0, BLOCK_O // PER_ROW)
        row_ok = row * PER_ROW < (g + 1) * C_OUT
        tl.atomic_add(da_base[None, :] + row[:, None] * (C_IN * KH * KW), part,
                      mask=row_ok[:, None] & c_ok[None, :])
    else:  # the tile lies inside one row
        row = (g * C_OUT + ob * BLOCK_O) // PER_ROW
        tl.atomic_add(da_base + row * (C_IN * KH * KW), tl.sum(da, axis=0), mask=c_ok)


def _block(size, low=16, high=64):
    """A power-of-two tile side for ``size`` elements, within [low, high] (tl.dot needs >= 16)."""
    return max(low, min(high, triton.next_power_of_2(size)))


def _output_size(x, weight, stride, padding, dilation):
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in
                 zip(x.shape[2:], weight.shape[2:], stride, padding, dilation))


def _memory_format(x):
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class _Geometry:
    """The shapes, strides and compile-time constants the three kernels share."""

    def __init__(self, x, weight, rows, stride, padding, dilation, groups):
        self.n, c_in, self.h, self.w = x.shape
        c_out, self.c_in, kh, kw = weight.shape
        self.c_out = c_out // groups
        self.oh, self.ow = _output_size(x, weight, stride, padding, dilation)
        self.groups = groups
        self.per_row = c_out // rows.shape[1]
        self.row_strides = rows.stride()[:3]  # sample, row, channel; taps are contiguous
        self.constants = dict(PER_ROW=self.per_row, KH=kh, KW=kw, SH=stride[0], SW=stride[1], PH=padding[0],
                              PW=padding[1], DH=dilation[0], DW=dilation[1])
        # bfloat16 tl.dot is wrong in the interpreter (module docstring).
        self.constants["UPCAST"] = interpreting() and x.dtype == torch.bfloat16
        tf32 = x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
        self.constants["PRECISION"] = "tf32" if tf32 and x.is_cuda else "ieee"

    def device(self, t):
        return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()

    @property
    def shape(self):
        return (self.n, self.c_out * self.groups, self.oh, self.ow)


def _forward(x, weight, rows, geo):
    out = torch.empty(geo.shape, device=x.device, dtype=x.dtype,
                      memory_format=_memory_format(x))
    bm, bn, bk = _block(geo.oh * geo.ow, high=64), _block(geo.c_out), _block(geo.c_in, high=32)
    grid = (triton.cdiv(geo.oh * geo.ow, bm), triton.cdiv(geo.c_out, bn), geo.n * geo.groups)
    with geo.device(x):
        _forward_kernel[grid](
            x, weight, rows, out, geo.c_in, geo.c_out, geo.h, geo.w, geo.oh, geo.ow, geo.groups,
            *x.stride(), *geo.row_strides, *out.stride(), **geo.constants,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return out


def _grad_input(dout, x, weight, rows, geo):
    dx = torch.empty_like(x)
    bm, bn, bk = _block(geo.h * geo.w, high=64), _block(geo.c_in), _block(geo.c_out, high=32)
    grid = (triton.cdiv(geo.h * geo.w, bm), triton.cdiv(geo.c_in, bn), geo.n * geo.groups)
    with geo.device(x):
        _grad_input_kernel[grid](
            dout, weight, rows, dx, geo.c_in, geo.c_out, geo.h, geo.w, geo.oh, geo.ow, geo.groups,
            *dout.stride(), *geo.row_strides, *dx.stride(), **geo.constants,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return dx


def _row_sum(per_row, block_o, c_out):
    """How the attention gradient's tile is summed into rows (see _grad_weight_kernel)."""
    power_of_two = per_row & (per_row - 1) == 0
    if per_row > 1 and power_of_two and block_o % per_row == 0 and c_out % per_row == 0:
        return 1
    if per_row > 1 and per_row % block_o == 0 and c_out % block_o == 0:
        return 2
    return 0


def _grad_weight(dout, x, weight, rows, geo):
    dk = torch.zeros_like(weight)
    da = torch.zeros(rows.shape, device=rows.device, dtype=torch.float32)
    pixels = geo.oh * geo.ow
    bo, bc, bp = _block(geo.c_out), _block(geo.c_in), _block(pixels, high=64)
    tiles = triton.cdiv(geo.c_out, bo) * triton.cdiv(geo.c_in, bc) * geo.n * geo.groups
    # Enough programs to fill a GPU: split the pixel sum (the atomics add the parts).
    split = max(1, min(triton.cdiv(pixels, 4 * bp), triton.cdiv(512, tiles)))
    per_split = triton.cdiv(triton.cdiv(pixels, split), bp) * bp
    split = triton.cdiv(pixels, per_split)
    grid = (triton.cdiv(geo.c_out, bo) * triton.cdiv(geo.c_in, bc), weight.shape[2] * weight.shape[3],
            geo.n * geo.groups * split)
    with geo.device(x):
        _grad_weight_kernel[grid](
            dout, x, weight, rows, dk, da, geo.c_in, geo.c_out, geo.h, geo.w, geo.oh, geo.ow,
            geo.groups, split, per_split, triton.cdiv(geo.c_in, bc), *dout.stride(),
            *x.stride(), *geo.row_strides, da.stride(0), **geo.constants, BLOCK_O=bo, BLOCK_C=bc, BLOCK_P=bp,
            ROW_SUM=_row_sum(geo.per_row, bo, geo.c_out))
    return dk, da


class _AWConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, rows, stride, padding, dilation, groups):
        geo = _Geometry(x, weight, rows, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, rows)
        ctx.geo = geo
        return _forward(x, weight, rows, geo)

    @staticmethod
    def backward(ctx, dout):
        x, weight, rows = ctx.saved_tensors
        geo = ctx.geo
        dx = dk = da = None
        if ctx.needs_input_grad[0]:
            dx = _grad_input(dout, x, weight, rows, geo)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dk, da = _grad_weight(dout, x, weight, rows, geo)
        return dx, dk, da.view_as(rows) if da is not None else None, None, None, None, None


def aw_conv2d_triton(x, weight, rows, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """``out[n] = conv2d(x[n], (1 + A[n]) * weight)`` with A given as its rows.

    ``x``: (N, C_in, H, W), float32/float16/bfloat16, any memory format (the output has it
    too); ``weight``: (C_out, C_in/g, kh, kw) float32; ``rows``: (N, G, C_in/g, kh, kw)
    float32 with G dividing C_out, row ``o // (C_out / G)`` for output channel o. Differentiable
    in all three (gradients of weight and rows in float32). No bias: add it to the output.
    """
    problem = unsupported(x, weight, rows)
    if problem:
        raise RuntimeError(f"aw_conv2d_triton: {problem}")
    c_out, c_in_g, kh, kw = weight.shape
    if rows.dim() != 5 or rows.shape[0] != x.shape[0] or rows.shape[2:] != weight.shape[1:] \
            or c_out % rows.shape[1]:
        raise ValueError(f"aw_conv2d_triton: rows {tuple(rows.shape)} must be (N, G, C_in/g, kh, kw) "
                         f"with G dividing C_out, for x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    # The kernels index K and A's taps contiguously.
    weight = weight.contiguous()
    if rows.stride(-1) != 1 or rows.stride(-2) != kw:
        rows = rows.contiguous()
    return _AWConv2dFunction.apply(x, weight, rows, tuple(stride), tuple(padding),
                                   tuple(dilation), groups)
