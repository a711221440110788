"""Attention-augmented convolution: relative logits vs brute force, fused vs unfused."""
import pytest
import torch

from aw_detection.layers import (
    AAConv2d,
    AWConv2d,
    aa_channels,
    rel_to_abs,
    relative_logits_2d,
    relative_logits_2d_naive,
)


def brute_force_relative_logits(q, rel_h, rel_w):
    b, n, h, w, _ = q.shape
    m = (rel_w.shape[0] + 1) // 2
    out = torch.zeros(b, n, h * w, h * w, dtype=q.dtype)
    for hi in range(h):
        for wi in range(w):
            for hj in range(h):
                for wj in range(w):
                    r = rel_w[wj - wi + m - 1] + rel_h[hj - hi + m - 1]
                    out[:, :, hi * w + wi, hj * w + wj] = (q[:, :, hi, wi] * r).sum(-1)
    return out


def test_rel_to_abs_indexing():
    length = 5
    x = torch.randn(2, length, 2 * length - 1, dtype=torch.float64)
    out = rel_to_abs(x)
    for i in range(length):
        for j in range(length):
            assert out[:, i, j].equal(x[:, i, j - i + length - 1])


@pytest.mark.parametrize("h,w,max_size", [(4, 5, 5), (3, 3, 7), (1, 6, 6), (5, 2, 9)])
def test_relative_logits_match_brute_force(h, w, max_size):
    torch.manual_seed(h * w)
    q = torch.randn(2, 3, h, w, 4, dtype=torch.float64)
    rel_h = torch.randn(2 * max_size - 1, 4, dtype=torch.float64)
    rel_w = torch.randn(2 * max_size - 1, 4, dtype=torch.float64)
    expected = brute_force_relative_logits(q, rel_h, rel_w)
    torch.testing.assert_close(relative_logits_2d(q, rel_h, rel_w), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(relative_logits_2d_naive(q, rel_h, rel_w), expected, atol=1e-12, rtol=0)


def test_relative_logits_refuse_maps_over_the_table():
    q = torch.randn(1, 1, 4, 6, 2)
    with pytest.raises(ValueError, match="width=6 exceeds the relative table's max_size=5"):
        relative_logits_2d(q, torch.randn(9, 2), torch.randn(9, 2))


def test_paper_channel_defaults():
    assert aa_channels(512, 8) == (160, 56)  # kappa*512=102.4 -> 20/head minimum; nu -> 7/head
    assert aa_channels(2000, 8, kappa=0.2, nu=0.1) == (400, 200)
    layer = AAConv2d(64, 128, 3, heads=4)
    assert layer.attention_branch.key_channels == 80 and layer.attention_branch.value_channels == 16
    assert layer.conv.out_channels == 112


@pytest.mark.parametrize("stride,size", [(1, (6, 7)), (2, (9, 13))])
def test_fused_attention_equals_the_explicit_softmax(stride, size):
    torch.manual_seed(0)
    layer = AAConv2d(16, 32, 3, stride, heads=4, key_channels=16, value_channels=8,
                     max_size=8).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    fused = layer(x)
    layer.attention_branch.fused = False
    explicit = layer(x)
    torch.testing.assert_close(fused, explicit, atol=1e-10, rtol=0)
    expected_hw = tuple(-(-s // stride) for s in size)
    assert fused.shape == (2, 32, *expected_hw)


def test_attention_branch_against_a_per_head_loop():
    torch.manual_seed(1)
    layer = AAConv2d(8, 16, 3, heads=2, key_channels=8, value_channels=4, max_size=6).double()
    x = torch.randn(1, 8, 4, 5, dtype=torch.float64)
    att = layer.attention_branch
    q, k, v = att.qkv(x).split([8, 8, 4], 1)
    heads = []
    for head in range(2):
        qh = q[0, 4 * head:4 * head + 4].flatten(1).T * 4 ** -0.5  # (HW, d)
        kh = k[0, 4 * head:4 * head + 4].flatten(1).T
        vh = v[0, 2 * head:2 * head + 2].flatten(1).T
        rel = brute_force_relative_logits(qh.T.reshape(1, 1, 4, 4, 5).permute(0, 1, 3, 4, 2),
                                          att.rel_h, att.rel_w)[0, 0]
        heads.append((torch.softmax(qh @ kh.T + rel, -1) @ vh).T.reshape(2, 4, 5))
    expected = att.proj(torch.cat(heads)[None])
    torch.testing.assert_close(layer(x)[:, 12:], expected, atol=1e-10, rtol=0)


def test_aw_conv_branch_and_gradients():
    layer = AAConv2d(16, 32, 3, heads=4, key_channels=16, value_channels=8, max_size=8,
                     aw=dict(attention_groups=4))
    assert isinstance(layer.conv, AWConv2d) and layer.conv.out_channels == 24
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.attention_branch.rel_h.grad.abs().sum() > 0 and x.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="heads=8 must divide key_channels=60"):
        AAConv2d(16, 64, 3, heads=8, key_channels=60, value_channels=8)
    with pytest.raises(ValueError, match="heads=4 must divide value_channels=6"):
        AAConv2d(16, 64, 3, heads=4, key_channels=16, value_channels=6)
    with pytest.raises(ValueError, match="value_channels=64 must be < out_channels=64"):
        AAConv2d(16, 64, 3, heads=4, key_channels=16, value_channels=64)
    layer = AAConv2d(16, 32, 3, 2, heads=4, key_channels=16, value_channels=8, max_size=4)
    with pytest.raises(ValueError, match="attention map 5x4 exceeds max_size=4"):
        layer(torch.randn(1, 16, 10, 8))


def test_flop_count_fused_equals_explicit():
    from aw_detection.layers import flop_count

    layer = AAConv2d(16, 32, 3, heads=4, key_channels=16, value_channels=8, max_size=8).eval()
    x = torch.randn(1, 16, 6, 7)
    fused = flop_count(layer, (x,))
    layer.attention_branch.fused = False
    assert fused == flop_count(layer, (x,))
    hw = 6 * 7  # q k^T (d_k) and weights v (d_v) over all position pairs
    assert fused > hw * hw * (16 + 8)
