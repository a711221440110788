"""2-D relative position logits of attention-augmented convolution.

Bello, Zoph, Vaswani, Shlens, Le, "Attention Augmented Convolutional Networks", ICCV 2019,
arXiv 1904.09925, Sec. 3.1.1. The per-axis "relative to absolute" pad-and-reshape trick is
the paper's (its Appendix A.3 code), after Music Transformer (Huang et al., 2018).
"""
import torch
import torch.nn.functional as F

__all__ = ["rel_to_abs", "relative_logits_2d", "relative_logits_2d_naive"]


def rel_to_abs(x):
    """(..., L, 2L-1) logits against relative offsets -> (..., L, L) absolute:
    ``out[..., i, j] = x[..., i, j - i + L - 1]``, without gathering."""
    *batch, length, _ = x.shape
    x = F.pad(x, (0, 1)).reshape(*batch, 2 * length * length)
    x = F.pad(x, (0, length - 1)).reshape(*batch, length + 1, 2 * length - 1)
    return x[..., :length, length - 1:]


def _central_rows(table, length, axis):
    max_size = (table.shape[0] + 1) // 2
    if length > max_size:
        raise ValueError(
            f"relative_logits_2d: feature map {axis}={length} exceeds the relative table's "
            f"max_size={max_size}; raise max_size (MODEL.AA.MAX_SIZE) or use smaller inputs"
        )
    return table[max_size - length: max_size + length - 1]


def relative_logits_2d(q, rel_h, rel_w):
    """Relative logits ``out[b, n, i, j] = q_i . (rel_w[w_j - w_i + M-1] + rel_h[h_j - h_i + M-1])``.

    Args:
        q: queries (B, heads, H, W, d).
        rel_h, rel_w: tables (2M-1, d), row m = offset m - (M-1), M >= H, W; the central
            2H-1 / 2W-1 rows serve a smaller map.
    Returns:
        (B, heads, H*W, H*W), positions flattened row-major. Memory stays O(H*W*(H+W)) before
        the output: no (H*W, H*W, d) tensor is formed.
    """
    b, n, h, w, _ = q.shape
    rw, rh = _central_rows(rel_w, w, "width"), _central_rows(rel_h, h, "height")
    logits_w = rel_to_abs(torch.einsum("bnhwd,md->bnhwm", q, rw))  # (b, n, h, w_i, w_j)
    logits_h = rel_to_abs(torch.einsum("bnhwd,md->bnwhm", q, rh))  # (b, n, w, h_i, h_j)
    out = logits_w.unsqueeze(4) + logits_h.transpose(2, 3).unsqueeze(5)  # (b,n,h_i,w_i,h_j,w_j)
    return out.reshape(b, n, h * w, h * w)


def relative_logits_2d_naive(q, rel_h, rel_w):
    """The same by gathering an (H*W, H*W, d) embedding per pair: the memory-hungry baseline."""
    b, n, h, w, d = q.shape
    max_size = (rel_w.shape[0] + 1) // 2
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    emb = (rel_h[ys[None, :] - ys[:, None] + max_size - 1]
           + rel_w[xs[None, :] - xs[:, None] + max_size - 1])  # (HW, HW, d)
    return torch.einsum("bnid,ijd->bnij", q.reshape(b, n, h * w, d), emb)
