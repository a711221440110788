"""AWConv2d: fast paths against the per-sample reference, invariants, export, FLOPs."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm

from aw_detection.layers import AWConv2d, aw_conv2d_reference, flop_count


def _randomised(layer, std=0.3, seed=0):
    """A layer with a non-zero attention generator (a fresh one gives A = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.generator.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return layer


CASES = [  # (in, out, kernel, stride, padding, dilation, groups, bias, attention_groups)
    (8, 16, 3, 1, 1, 1, 1, False, 0),
    (8, 16, 3, 2, 1, 1, 1, True, 4),
    (8, 12, 3, 1, 2, 2, 2, False, 0),
    (6, 6, (3, 1), 1, (1, 0), 1, 3, True, 3),
    (4, 8, 1, 1, 0, 1, 1, False, 2),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fast_paths_match_per_sample_reference(case, batch, dtype, atol):
    cin, cout, k, s, p, d, g, bias, ag = case
    torch.manual_seed(batch)
    layer = _randomised(AWConv2d(cin, cout, k, s, p, d, g, bias, attention_groups=ag,
                                 reduction=2)).to(dtype)
    x = torch.randn(batch, cin, 9, 11, dtype=dtype)
    assert layer.attention(x).abs().max() > 0.01
    torch.testing.assert_close(layer(x), aw_conv2d_reference(layer, x), atol=atol, rtol=0)


def test_attention_is_the_published_generator_shared_by_row():
    layer = _randomised(AWConv2d(8, 12, 3, padding=1, groups=2, attention_groups=3, reduction=4))
    x = torch.randn(2, 8, 7, 6)
    gen = layer.generator
    pooled = F.adaptive_avg_pool2d(x, (3, 3))
    rows = F.conv2d(F.relu(F.conv2d(pooled, gen.reduce.weight, gen.reduce.bias)),
                    gen.expand.weight, gen.expand.bias).view(2, 3, 4, 3, 3)
    a = layer.attention(x)
    assert a.shape == (2, 12, 4, 3, 3)
    for channel in range(12):  # row r serves 4 consecutive output channels
        torch.testing.assert_close(a[:, channel], rows[:, channel // 4])
    assert not torch.allclose(a[:, 0], a[:, 4])


@pytest.mark.parametrize("batch", [1, 4])
def test_fresh_layer_is_the_plain_convolution(batch):
    layer = AWConv2d(8, 16, 3, stride=2, padding=1, bias=True).double()
    x = torch.randn(batch, 8, 10, 10, dtype=torch.float64)
    assert torch.equal(layer.attention(x), torch.zeros_like(layer.attention(x)))
    expected = F.conv2d(x, layer.weight, layer.bias, 2, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)
    if batch == 1:
        assert torch.equal(layer(x), expected)


def test_samples_are_independent():
    layer = _randomised(AWConv2d(6, 8, 3, padding=1)).double()
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[1:] = torch.randn(2, 6, 8, 8, dtype=torch.float64) * 5
    torch.testing.assert_close(layer(x)[0], layer(y)[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x)[0], layer(x[:1])[0], atol=1e-12, rtol=0)


def test_gradcheck():
    layer = _randomised(AWConv2d(4, 4, 3, padding=1, bias=True, attention_groups=2,
                                 reduction=1)).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, *params: layer(inp), (x, *layer.parameters()))


def test_norm_and_activation_like_detectron2_conv():
    conv = Conv2d(8, 8, 3, padding=1, bias=False, norm=get_norm("BN", 8), activation=F.relu)
    layer = AWConv2d(8, 8, 3, padding=1, norm=get_norm("BN", 8), activation=F.relu)
    missing, unexpected = layer.load_state_dict(conv.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("generator.") for k in missing)
    conv.eval(), layer.eval()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=0)
    _randomised(layer)
    torch.testing.assert_close(layer(x), aw_conv2d_reference(layer, x), atol=1e-5, rtol=0)


def test_channels_last_input():
    layer = _randomised(AWConv2d(8, 8, 3, padding=1))
    x = torch.randn(3, 8, 9, 9)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = layer(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_bf16_autocast_on_cpu_keeps_attention_float32(batch):
    layer = _randomised(AWConv2d(16, 16, 3, padding=1), std=0.1)
    x = torch.randn(batch, 16, 12, 12)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.attention(x.bfloat16()).dtype == torch.float32
        assert layer.modulated_weight(x.bfloat16()).dtype == torch.float32
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def test_flop_count_is_conv_plus_generator():
    n, cin, cout, h, w, ag = 3, 16, 32, 10, 12, 4
    layer = AWConv2d(cin, cout, 3, padding=1, attention_groups=ag)  # hidden = max(16//16, 8)
    hidden = 8
    conv = cout * cin * 9 * h * w
    generator = cin * h * w + hidden * cin * 9 + ag * cin * hidden * 9
    modulation = cout * cin * 9
    assert flop_count(layer, (torch.randn(n, cin, h, w),)) == n * (conv + generator + modulation)


def test_trace_matches_eager_at_batch_1():
    layer = _randomised(AWConv2d(8, 8, 3, padding=1, bias=True)).eval()
    x = torch.randn(1, 8, 10, 10)
    traced = torch.jit.trace(layer, x)
    other = torch.randn(1, 8, 10, 10)
    torch.testing.assert_close(traced(other), layer(other))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="attention_groups must divide out_channels=16.*got 5"):
        AWConv2d(8, 16, 3, attention_groups=5)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=8"):
        AWConv2d(8, 9, 3, groups=3)
    layer = AWConv2d(8, 16, 3)
    with pytest.raises(ValueError, match="expects 8 input channels, got 4"):
        layer(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="4-D input.*got shape \\(8, 8, 8\\)"):
        layer(torch.randn(8, 8, 8))


def test_torch_export_matches_eager():
    # torch.jit.script is deprecated in torch 2.14; torch.export is the supported route.
    layer = _randomised(AWConv2d(8, 8, 3, padding=1)).eval()
    program = torch.export.export(layer, (torch.randn(1, 8, 10, 10),))
    x = torch.randn(1, 8, 10, 10)
    torch.testing.assert_close(program.module()(x), layer(x))
