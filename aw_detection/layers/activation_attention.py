"""Activation attention: Squeeze-and-Excitation and CBAM.

SE: Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018.
CBAM: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018.

Both rescale activations (the residual branch output, before the sum); they are the partners
AW is combined with in Zhu et al. 2021.
"""
import torch
import torchvision
from torch import nn

__all__ = ["SqueezeExcitation", "CBAM", "create_act_attention"]


class SqueezeExcitation(torchvision.ops.SqueezeExcitation):
    """torchvision's block (global average pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid ->
    channel scale; parameters ``fc1`` / ``fc2``), sized by a reduction ratio."""

    def __init__(self, channels, reduction=16):
        super().__init__(channels, max(channels // reduction, 1))


class CBAM(nn.Module):
    """Channel attention (shared MLP on avg- and max-pooled descriptors), then spatial
    attention (7x7 conv on the channel-wise avg and max maps)."""

    def __init__(self, channels, reduction=16, spatial_kernel=7):
        super().__init__()
        hidden = max(channels // reduction, 1)
        # Bias-free MLP as in the CBAM authors' code.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x):
        channel = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        x = x * torch.sigmoid(channel)
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


def create_act_attention(kind, channels, reduction=16):
    """Factory by name: "" -> None, "SE", "CBAM" (case-insensitive)."""
    kind = kind.upper()
    if not kind:
        return None
    if kind == "SE":
        return SqueezeExcitation(channels, reduction)
    if kind == "CBAM":
        return CBAM(channels, reduction)
    raise ValueError(f'MODEL.ACT_ATTENTION.TYPE must be "", "SE" or "CBAM", got "{kind}"')
