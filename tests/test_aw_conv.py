"""AWConv2d: every formulation against the per-sample reference, invariants, tracing and
export at other batch sizes, FLOPs."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch.utils._python_dispatch import TorchDispatchMode

from aw_detection.layers import AWConv2d, aw_conv2d_reference, flop_count
from aw_detection.layers.aw_conv import PATHS, _adaptive_avg_pool2d_onnx, select_path


def _paths(batch):
    """The torch formulations (tests/test_aw_conv_triton.py tests the fused kernel)."""
    return [p for p in PATHS if p != "triton" and (p != "plain" or batch == 1)]


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
    (6, 12, 3, 1, 1, 1, 2, True, 3),  # rows of 4 channels across conv groups of 6
    (6, 6, (3, 1), 1, (1, 0), 1, 3, True, 3),
    (4, 8, 1, 1, 0, 1, 1, False, 2),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_every_path_matches_per_sample_reference(case, batch, dtype, atol):
    cin, cout, k, s, p, d, g, bias, ag = case
    torch.manual_seed(batch)
    layer = _randomised(AWConv2d(cin, cout, k, s, p, d, g, bias, attention_groups=ag,
                                 reduction=2)).to(dtype)
    x = torch.randn(batch, cin, 9, 11, dtype=dtype)
    assert layer.attention(x).abs().max() > 0.01
    expected = aw_conv2d_reference(layer, x)
    with torch.no_grad():
        for path in _paths(batch):
            layer.path = path
            torch.testing.assert_close(layer(x), expected, atol=atol, rtol=0, msg=path)


@pytest.mark.parametrize("case", CASES[:4])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_path_backward_matches_reference(case, batch):
    """Each formulation's backward against autograd through the per-sample reference, with
    input gradients as inside a network."""
    cin, cout, k, s, p, d, g, bias, ag = case
    torch.manual_seed(batch)
    layer = _randomised(AWConv2d(cin, cout, k, s, p, d, g, bias, attention_groups=ag,
                                 reduction=2)).double()
    x = torch.randn(batch, cin, 9, 11, dtype=torch.float64, requires_grad=True)
    out_grad = torch.randn_like(aw_conv2d_reference(layer, x))
    params = [x, *layer.parameters()]
    expected = torch.autograd.grad(aw_conv2d_reference(layer, x), params, out_grad)
    for path in _paths(batch):
        layer.path = path
        got = torch.autograd.grad(layer(x), params, out_grad)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=path)


def test_select_path_policy():
    assert select_path(1, "cpu") == "plain" and select_path(1, "cuda") == "plain"
    assert select_path(2, "cpu", train=True) == "per_sample" and select_path(2, "cpu") == "grouped"
    assert select_path(4, "cuda") == select_path(4, "cuda", train=True) == "grouped"
    layer = AWConv2d(4, 4, 3, padding=1)
    assert layer.conv_path(torch.randn(1, 4, 5, 5)) == "plain"
    # Training is any call autograd records: through the parameters or through the input.
    assert layer.conv_path(torch.randn(3, 4, 5, 5)) == "per_sample"
    with torch.no_grad():
        assert layer.conv_path(torch.randn(3, 4, 5, 5)) == "grouped"
    layer.requires_grad_(False)
    assert layer.conv_path(torch.randn(3, 4, 5, 5)) == "grouped"
    assert layer.conv_path(torch.randn(3, 4, 5, 5, requires_grad=True)) == "per_sample"
    layer.generator.reduce.requires_grad_(True)
    assert layer.conv_path(torch.randn(3, 4, 5, 5)) == "per_sample"
    layer.requires_grad_(True)
    layer.path = "grouped"
    assert layer.conv_path(torch.randn(1, 4, 5, 5)) == "grouped"
    layer.path = "plain"
    with pytest.raises(ValueError, match="path='plain' needs a batch of 1, got 2"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="path must be None or one of"):
        AWConv2d(4, 4, 3, path="loop")


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


def test_empty_batch_gives_an_empty_output():
    layer = _randomised(AWConv2d(6, 8, 3, stride=2, padding=1))  # a C4 head given no boxes
    x = torch.randn(0, 6, 7, 7, requires_grad=True)
    out = layer(x)
    assert out.shape == (0, 8, 4, 4)
    out.sum().backward()


def test_samples_are_independent():
    layer = _randomised(AWConv2d(6, 8, 3, padding=1)).double()
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[1:] = torch.randn(2, 6, 8, 8, dtype=torch.float64) * 5
    for path in _paths(3):
        layer.path = path
        torch.testing.assert_close(layer(x)[0], layer(y)[0], atol=1e-12, rtol=0, msg=path)
        torch.testing.assert_close(layer(x)[0], layer(x[:1])[0], atol=1e-12, rtol=0, msg=path)


@pytest.mark.parametrize("path", ["plain", "per_sample", "any_batch"])  # grouped: see above
def test_gradcheck(path):
    layer = _randomised(AWConv2d(4, 4, 3, padding=1, bias=True, attention_groups=2,
                                 reduction=1, path=path)).double()
    x = torch.randn(1 if path == "plain" else 2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
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


class _LargeCopies(TorchDispatchMode):
    """Records ops that write a new tensor as large as ``numel`` by copying (not computing)."""

    COPIES = {"aten.copy_.default", "aten.clone.default", "aten._to_copy.default",
              "aten.contiguous.default", "aten.cat.default"}

    def __init__(self, numel):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) in self.COPIES and isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.seen.append(str(func))
        return out


@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_input(batch):
    layer = _randomised(AWConv2d(8, 8, 3, padding=1))
    x = torch.randn(batch, 8, 9, 9)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for path in _paths(batch):
        layer.path = path
        out = layer(x_cl)
        assert out.is_contiguous(memory_format=torch.channels_last), path
        torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=0, msg=path)
    layer.path = None
    with _LargeCopies(x.numel()) as copies:
        layer(x_cl)
    # The training path reads channels_last input in place; the output concatenation (N > 1)
    # is the only full-size copy it makes.
    assert copies.seen == ([] if batch == 1 else ["aten.cat.default"])
    layer.path = "grouped"
    with torch.no_grad(), _LargeCopies(x.numel()) as copies:
        layer(x_cl)
    assert "aten.clone.default" in copies.seen or "aten.copy_.default" in copies.seen


@pytest.mark.parametrize("batch", [1, 2])
def test_bf16_autocast_on_cpu_keeps_attention_float32(batch):
    layer = _randomised(AWConv2d(16, 16, 3, padding=1), std=0.1)
    x = torch.randn(batch, 16, 12, 12)
    expected = layer(x)
    for path in _paths(batch):
        layer.path = path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer.attention(x.bfloat16()).dtype == torch.float32
            assert layer.modulated_weight(x.bfloat16()).dtype == torch.float32
            out = layer(x)
            out.float().sum().backward()  # the training path under autocast
        assert out.dtype == torch.bfloat16
        assert layer.generator.expand.weight.grad.dtype == torch.float32
        torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05, msg=path)


def test_flop_count_is_conv_plus_generator():
    n, cin, cout, h, w, ag = 3, 16, 32, 10, 12, 4
    layer = AWConv2d(cin, cout, 3, padding=1, attention_groups=ag)  # hidden = max(16//16, 8)
    hidden = 8
    conv = cout * cin * 9 * h * w
    generator = cin * h * w + hidden * cin * 9 + ag * cin * hidden * 9
    modulation = cout * cin * 9
    assert flop_count(layer, (torch.randn(n, cin, h, w),)) == n * (conv + generator + modulation)


def _trace(layer, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in torch 2.14
        return torch.jit.trace(layer, x)


@pytest.mark.parametrize("groups,bias", [(1, False), (2, True)])
@pytest.mark.parametrize("traced_batch", [1, 3])
def test_trace_is_correct_at_every_batch(groups, bias, traced_batch):
    layer = _randomised(AWConv2d(8, 8, 3, padding=1, groups=groups, bias=bias)).eval()
    traced = _trace(layer, torch.randn(traced_batch, 8, 10, 10))
    for batch in (1, 2, 3):
        x = torch.randn(batch, 8, 10 + batch, 9)  # other sizes too
        torch.testing.assert_close(traced(x), aw_conv2d_reference(layer, x), atol=1e-5, rtol=0)


def test_trace_of_fresh_layer_is_the_plain_convolution():
    layer = AWConv2d(8, 8, 3, padding=1, bias=True).eval()
    x = torch.randn(1, 8, 10, 10)
    assert torch.equal(_trace(layer, x)(x), F.conv2d(x, layer.weight, layer.bias, 1, 1))


@pytest.mark.parametrize("attention_groups", [0, 4])
def test_trace_at_batch_1_is_bit_exact_with_eager(attention_groups):
    # Export checks compare eager and exported outputs: at N = 1 both run the same ops.
    layer = _randomised(AWConv2d(32, 16, 3, padding=1, attention_groups=attention_groups)).eval()
    x = torch.randn(1, 32, 10, 10)
    with torch.no_grad():
        assert torch.equal(_trace(layer, x)(x), layer(x))


@pytest.mark.parametrize("attention_groups", [0, 4])
def test_trace_at_batch_1_forms_the_kernels_without_a_copy(attention_groups):
    # A copy of the kernels per call made the traced AW-lite detector ~1.3x slower than eager.
    layer = _randomised(AWConv2d(32, 16, 3, padding=1, attention_groups=attention_groups)).eval()
    x = torch.randn(1, 32, 10, 10)
    traced = _trace(layer, x)
    with torch.no_grad(), _LargeCopies(layer.weight.numel()) as copies:
        out = traced(x)
    assert copies.seen == []
    torch.testing.assert_close(out, aw_conv2d_reference(layer, x), atol=1e-5, rtol=0)


def test_trace_refuses_a_forced_batch_dependent_path():
    layer = _randomised(AWConv2d(8, 8, 3, padding=1, path="plain"))
    with pytest.raises(RuntimeError, match="path='plain' would freeze the batch size"):
        _trace(layer, torch.randn(1, 8, 10, 10))


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


def test_torch_export_with_dynamic_batch_is_correct_at_every_batch():
    # torch.jit.script is deprecated in torch 2.14; torch.export is the supported route. An
    # export example of batch 1 specialises the batch (torch's rule), so the example has 2.
    layer = _randomised(AWConv2d(8, 8, 3, padding=1)).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(layer, (torch.randn(2, 8, 10, 10),),
                                  dynamic_shapes=({0: batch},)).module()
    for n in (1, 2, 3):
        x = torch.randn(n, 8, 10, 10)
        torch.testing.assert_close(program(x), aw_conv2d_reference(layer, x), atol=1e-5, rtol=0)


def test_torch_export_with_static_batch_refuses_another():
    layer = _randomised(AWConv2d(8, 8, 3, padding=1)).eval()
    program = torch.export.export(layer, (torch.randn(1, 8, 10, 10),)).module()
    x = torch.randn(1, 8, 10, 10)
    torch.testing.assert_close(program(x), layer(x))
    with pytest.raises(Exception, match="size\\(\\)\\[0\\] == 1"):
        program(torch.randn(3, 8, 10, 10))


@pytest.mark.parametrize("size", [(2, 3), (9, 11), (50, 67)])
def test_onnx_pooling_is_adaptive_average_pooling(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for bins in [(3, 3), (1, 3)]:
        torch.testing.assert_close(_adaptive_avg_pool2d_onnx(x, bins), F.adaptive_avg_pool2d(x, bins),
                                   atol=1e-12, rtol=0)


def test_onnx_export_is_correct_at_other_sizes_and_refuses_other_batches():
    """TorchScript-based ONNX export with a dynamic image size, run by onnxruntime. The batch
    is fixed (ONNX's Conv needs static kernel shapes): another batch is refused, not wrong."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import io

    layer = _randomised(AWConv2d(8, 8, 3, padding=1, groups=2, bias=True)).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(1, 8, 10, 10),), f, dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    session = ort.InferenceSession(f.getvalue())
    for h, w in [(10, 10), (13, 7), (9, 12)]:
        x = torch.randn(1, 8, h, w)
        out = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        torch.testing.assert_close(out, aw_conv2d_reference(layer, x), atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="(?i)reshape|shape|dimension"):
        session.run(None, {"x": torch.randn(3, 8, 10, 10).numpy()})
