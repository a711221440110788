"""The fused Triton AW-convolution (layers/aw_conv_triton.py) against the per-sample reference:
forward and the gradients of input, kernel and attention, run on CPU tensors by Triton's
interpreter (TRITON_INTERPRET=1, set in conftest.py)."""
import logging

import pytest
import torch

from aw_detection.layers import AWConv2d, aw_conv2d_reference
from aw_detection.layers import aw_conv
from aw_detection.layers.aw_conv_triton import aw_conv2d_triton, interpreting

CASES = [  # (in, out, kernel, stride, padding, dilation, groups, bias, attention_groups, N, H, W)
    (8, 16, 3, 1, 1, 1, 1, False, 0, 2, 7, 9),  # AW-full
    (8, 16, 3, 2, 1, 1, 1, True, 4, 3, 9, 11),  # AW-lite, stride 2
    (16, 8, 1, 1, 0, 1, 1, False, 0, 1, 5, 7),  # 1x1
    (8, 8, 3, 1, 2, 2, 1, False, 2, 2, 9, 8),  # dilation 2
    (8, 16, 3, 1, 1, 1, 2, False, 0, 3, 6, 5),  # ResNeXt groups
    (8, 16, 3, 1, 1, 1, 4, False, 2, 2, 5, 5),  # one attention row across two conv groups
]

# Rounding of K (1 + A) and x to the input dtype, float32 accumulation: error relative to the
# largest output of these shapes (measured 4.6e-4 for float16, 9e-3 for bfloat16).
HALF_RTOL = {torch.float16: 2e-3, torch.bfloat16: 3e-2}


def _layer(case, seed=0, std=0.3):
    cin, cout, k, s, p, d, g, bias, ag = case[:9]
    torch.manual_seed(seed)
    layer = AWConv2d(cin, cout, k, s, p, d, g, bias, attention_groups=ag, reduction=2)
    with torch.no_grad():
        for param in layer.generator.parameters():
            param.normal_(0, std)
    return layer


def _input(case, seed=1):
    n, h, w = case[9:]
    return torch.randn(n, case[0], h, w, generator=torch.Generator().manual_seed(seed))


def test_runs_in_the_interpreter():
    assert interpreting()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_forward_and_gradients_match_reference(case):
    layer, x = _layer(case), _input(case)
    params = [x.requires_grad_(), *layer.parameters()]
    expected = aw_conv2d_reference(layer, x)
    assert layer.attention(x).abs().max() > 0.1
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, params, grad)
    layer.path = "triton"
    out = layer(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    names = ["input", *(name for name, _ in layer.named_parameters())]
    for name, got, want in zip(names, torch.autograd.grad(out, params, grad), expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def test_samples_keep_their_own_attention():
    case = CASES[1]
    layer, x = _layer(case), _input(case)
    layer.path = "triton"
    with torch.no_grad():
        out = layer(x)
        for i in range(x.shape[0]):
            torch.testing.assert_close(out[i:i + 1], aw_conv2d_reference(layer, x[i:i + 1]),
                                       atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    case = CASES[0]
    layer, x = _layer(case), _input(case).to(dtype)
    rows = layer._attention_rows(x.float()).detach()
    out = aw_conv2d_triton(x, layer.weight.detach(), rows, layer.stride, layer.padding)
    assert out.dtype == dtype
    expected = aw_conv2d_reference(layer.double(), x.double()).detach()
    scale = expected.abs().max()
    assert (out.double() - expected).abs().max() <= HALF_RTOL[dtype] * scale


def test_bf16_autocast_keeps_the_attention():
    """Under autocast only the convolution's operands are rounded: A is float32, K (1 + A) is
    formed in float32, so the attention's effect on the output survives bfloat16."""
    case = CASES[0]
    layer, x = _layer(case, std=0.05), _input(case)
    with torch.no_grad():
        expected = aw_conv2d_reference(layer, x)
        effect = expected - torch.nn.functional.conv2d(x, layer.weight, None, 1, 1)
    layer.path = "triton"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.attention(x).dtype == torch.float32
        out = layer(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert layer.weight.grad.dtype == layer.generator.expand.weight.grad.dtype == torch.float32
    # A of ~5 % moves the output by ~5 %; bfloat16's rounding errs by ~0.4 %.
    assert (out.float() - expected).norm() <= 0.25 * effect.norm()


def test_channels_last_input():
    case = CASES[1]
    layer, x = _layer(case), _input(case)
    layer.path = "triton"
    with torch.no_grad():
        out = layer(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, aw_conv2d_reference(layer, x), atol=1e-4, rtol=0)


def test_kernel_choice(monkeypatch, caplog):
    layer = AWConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    monkeypatch.setattr(aw_conv, "TRITON_FASTER", frozenset({layer.triton_shape()}))
    assert layer.conv_path(x) == "per_sample"  # auto: the fused kernel only on CUDA
    layer.kernel = "triton"
    assert layer.conv_path(x) == "triton"  # asked for, and the interpreter runs CPU tensors
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    aw_conv._log_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert layer.conv_path(x) == "per_sample"
    assert "KERNEL triton: Triton runs on CUDA tensors" in caplog.text
    layer.kernel, layer.path = "cudnn", "triton"
    with pytest.raises(RuntimeError, match="path='triton' cannot run.*Triton runs on CUDA"):
        layer(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="path='triton' cannot run this input: input dtype torch.float64"):
        layer.double()(x.double())
    with pytest.raises(ValueError, match="kernel must be one of"):
        AWConv2d(4, 4, 3, kernel="cuda")


def test_bad_rows_are_refused():
    x, weight = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match=r"rows \(2, 4, 4, 3, 3\) must be .*G dividing C_out"):
        aw_conv2d_triton(x, weight, torch.randn(2, 4, 4, 3, 3))
