"""Fair timing: candidates run interleaved in one process, medians compared to the first."""
import statistics
import time

import torch

__all__ = ["time_interleaved", "layer_benchmark", "RESNET50_3X3_SHAPES"]

# (stage, channels, height, width) of ResNet-50's 3x3 convs for an 800x1067 input.
RESNET50_3X3_SHAPES = [("res3", 128, 100, 134), ("res4", 256, 50, 67), ("res5", 512, 25, 34)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(candidates, iters=10, warmup=2, device=torch.device("cpu")):
    """Median seconds per call of each ``name -> fn``. Every round runs each candidate once,
    in a rotating order, so drift in machine speed hits all of them alike."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    _sync(device)
    times = {name: [] for name in names}
    for i in range(iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def layer_benchmark(batch_sizes=(1, 2, 4), iters=10, device="cpu", attention_groups=(0, 8)):
    """AWConv2d against nn.Conv2d at ResNet-50 3x3 shapes; one row per setting."""
    from .layers import AWConv2d

    device = torch.device(device)
    rows = []
    for stage, c, h, w in RESNET50_3X3_SHAPES:
        layers = {"conv": torch.nn.Conv2d(c, c, 3, padding=1, bias=False)}
        for g in attention_groups:
            layers[f"aw(G={g or c})"] = AWConv2d(c, c, 3, padding=1, attention_groups=g)
        layers = {k: v.to(device) for k, v in layers.items()}
        for n in batch_sizes:
            x = torch.randn(n, c, h, w, device=device)
            for mode in ("forward", "forward+backward"):
                def make(layer):
                    if mode == "forward":
                        def run():
                            with torch.no_grad():
                                layer(x)
                    else:
                        def run():
                            layer(x).sum().backward()
                    return run
                seconds = time_interleaved({k: make(v) for k, v in layers.items()}, iters,
                                           device=device)
                base = seconds["conv"]
                for name, s in seconds.items():
                    rows.append({"stage": stage, "batch": n, "mode": mode, "layer": name,
                                 "ms": 1000 * s, "ratio": s / base})
    return rows
