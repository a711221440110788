"""SE (torchvision's block) keeps the parameter names earlier checkpoints use, and computes
Hu et al.'s channel gate."""
import torch
import torch.nn.functional as F

from aw_detection.layers import SqueezeExcitation, create_act_attention


def test_squeeze_excitation_is_the_published_gate_with_our_names():
    se = SqueezeExcitation(32, reduction=8)
    assert {k: tuple(v.shape) for k, v in se.state_dict().items()} == {
        "fc1.weight": (4, 32, 1, 1), "fc1.bias": (4,), "fc2.weight": (32, 4, 1, 1), "fc2.bias": (32,)}
    x = torch.randn(2, 32, 5, 6)
    hidden = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), se.fc1.weight, se.fc1.bias))
    gate = torch.sigmoid(F.conv2d(hidden, se.fc2.weight, se.fc2.bias))
    torch.testing.assert_close(se(x), x * gate)
    assert isinstance(create_act_attention("se", 32, 8), SqueezeExcitation)
