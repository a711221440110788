"""What the AW attention does: per-layer statistics of A and plots.

For every AWConv2d (AAConv2d's AW branch included) the attention A of each input image is
captured with forward hooks, and summarised as:

- ``mean``, ``std``, ``max_abs``: of A over all its entries and images;
- ``mass_moved``: ||A * K||_1 / ||K||_1, the fraction of the kernel's L1 mass the attention
  adds or removes (0: the layer acts as the plain convolution);
- ``between_image_std``: std of A across images, averaged over entries, divided by the
  overall std: near 0 means A barely depends on the input (a static re-weighting);
- ``tap_mean``: mean A per kernel tap (kh x kw), which taps the attention favours.
"""
import json
import os

import numpy as np
import torch

from aw_detection.layers import AWConv2d

__all__ = ["collect_attention", "attention_statistics", "plot_attention", "write_statistics"]


def collect_attention(model, inputs):
    """{layer name: A stacked over images (n, C_out, C_in/g, kh, kw), float32 CPU} and the
    layers themselves. ``inputs``: list of Detectron2 input dicts, run one at a time."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, AWConv2d)}
    captured = {name: [] for name in layers}
    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=name: captured[name].append(mod.attention(args[0]).float().cpu()))
        for name, m in layers.items()]
    try:
        with torch.no_grad():
            for item in inputs:
                model([item])
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(a) for name, a in captured.items()}, layers


def attention_statistics(attention, layers):
    stats = {}
    for name, a in attention.items():
        weight = layers[name].weight.detach().float().cpu().abs()
        moved = (a.abs() * weight).sum((1, 2, 3, 4)) / weight.sum()
        std = a.std().item() if a.numel() > 1 else 0.0
        between = a.std(0).mean().item() / std if a.shape[0] > 1 and std > 0 else 0.0
        stats[name] = {
            "shape": list(a.shape[1:]), "images": a.shape[0],
            "mean": a.mean().item(), "std": std, "max_abs": a.abs().max().item(),
            "mass_moved": moved.mean().item(), "between_image_std": between,
            "tap_mean": a.mean((0, 1, 2)).tolist(),
        }
    return stats


def plot_attention(stats, attention, layer, output_dir):
    """summary.png (every layer) and layer_<name>.png (one layer in detail); returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    short = [n.replace("backbone.bottom_up.", "") for n in names]
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.35 * len(names)), 9), sharex=True)
    for ax, key, label in zip(axes, ("mass_moved", "max_abs", "between_image_std"),
                              ("kernel mass moved", "max |A|", "between-image std / std")):
        ax.bar(range(len(names)), [stats[n][key] for n in names], color="C0")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(names)), short, rotation=90, fontsize=7)
    fig.suptitle("AW attention per layer")
    fig.tight_layout()
    summary = os.path.join(output_dir, "summary.png")
    fig.savefig(summary, dpi=110)
    plt.close(fig)

    a = attention[layer].numpy()  # (n, C_out, C_in/g, kh, kw)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    channels = a.mean((0, 3, 4))[:64, :64]
    lim = np.abs(channels).max() or 1.0
    im = axes[0].imshow(channels, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    axes[0].set(title="mean A over taps and images", xlabel="input channel", ylabel="output channel")
    fig.colorbar(im, ax=axes[0])
    taps = a.mean((0, 1, 2))
    lim = np.abs(taps).max() or 1.0
    im = axes[1].imshow(taps, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for (i, j), v in np.ndenumerate(taps):
        axes[1].text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=8)
    axes[1].set(title="mean A per kernel tap", xticks=[], yticks=[])
    fig.colorbar(im, ax=axes[1])
    axes[2].hist(a.ravel(), bins=80, color="C1")
    axes[2].set(title="distribution of A", xlabel="A", ylabel="count", yscale="log")
    fig.suptitle(f"{layer}: A {list(a.shape[1:])} over {a.shape[0]} image(s)")
    fig.tight_layout()
    detail = os.path.join(output_dir, f"layer_{layer.replace('.', '_')}.png")
    fig.savefig(detail, dpi=110)
    plt.close(fig)
    return summary, detail


def write_statistics(stats, output_dir):
    path = os.path.join(output_dir, "attention_stats.json")
    with open(path, "w") as f:
        json.dump(stats, f, indent=2)
    return path
