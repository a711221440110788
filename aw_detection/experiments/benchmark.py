"""Fair cost measurements: candidates timed interleaved in one process, ratios to the first.

Peak memory: ``torch.cuda.max_memory_allocated`` on GPU. On CPU (no allocator statistics) a
fresh process builds the candidate, resets the kernel's peak-RSS mark (Linux
/proc/self/clear_refs) and runs it once: peak RSS minus RSS before the run. glibc is told to
mmap blocks over 64 KiB so that freed tensors leave the RSS; elsewhere the result is None.
A child that fails, dies or hangs is reported as a ``PeakMemoryError`` with the reason.
"""
import functools
import gc
import multiprocessing
import os
import queue
import re
import statistics
import tempfile
import time
import traceback

import torch

__all__ = [
    "CLOCKS",
    "PeakMemoryError",
    "RESNET50_3X3_SHAPES",
    "aa_memory_benchmark",
    "export_benchmark",
    "export_benchmark_table",
    "layer_benchmark",
    "model_benchmark",
    "peak_memory_mb",
    "share_weights",
    "synthetic_batch",
    "time_interleaved",
]

# (stage, channels, height, width) of ResNet-50's 3x3 convs for an 800x1067 input.
RESNET50_3X3_SHAPES = [("res3", 128, 100, 134), ("res4", 256, 50, 67), ("res5", 512, 25, 34)]


# "wall": elapsed time. "cpu": CPU time of this process, all its threads (spin-waits included):
# on a machine shared with other jobs it measures the work rather than the waiting for a core;
# most telling with one thread (OMP_NUM_THREADS=1).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(candidates, iters=10, warmup=2, device="cpu", clock="wall"):
    """Median seconds per call of each ``name -> fn``. Every round runs each candidate once,
    in a rotating order, so drift in machine speed hits all of them alike."""
    from aw_detection.engine.trainer import synchronize

    if clock == "cpu" and torch.device(device).type != "cpu":
        raise ValueError(f"clock='cpu' measures CPU work; use clock='wall' on {device}")
    now = CLOCKS[clock]
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    times = {name: [] for name in names}
    events = torch.device(device).type == "cuda"  # GPU time of the stream, CUDA events
    for i in range(iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                candidates[name]()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1000)
            else:
                start = now()
                candidates[name]()
                times[name].append(now() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_mib(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1)) / 1024


class PeakMemoryError(RuntimeError):
    """The peak-memory child process failed, died or timed out; the message says why."""


def _child_peak(make_fn, args, results):
    try:
        torch.set_num_threads(1)
        fn = make_fn(*args)
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            before = _status_mib("VmRSS")
        except OSError:  # no /proc (not Linux): no measurement, not a failure
            results.put(("ok", None))
            return
        fn()
        results.put(("ok", _status_mib("VmHWM") - before))
    except BaseException as e:  # any failure goes back to the parent with its reason
        results.put(("error", "".join(traceback.format_exception_only(type(e), e)).strip()))


def _wait_for_child(proc, results, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return results.get(timeout=0.2)
        except queue.Empty:
            pass
        if not proc.is_alive():
            try:  # a result put just before exiting
                return results.get(timeout=1)
            except queue.Empty:
                return "error", f"the process died (exit code {proc.exitcode}) before reporting"
        if time.monotonic() > deadline:
            proc.kill()
            return "error", f"no result after {timeout:.0f} s; the process was killed"


def peak_memory_mb(make_fn, *args, device="cpu", timeout=600):
    """Peak extra memory (MiB) of one call of ``make_fn(*args)()``. ``make_fn`` builds the
    candidate (not counted); it must be a picklable top-level function on CPU. None where the
    platform cannot measure it; ``PeakMemoryError`` when the child fails, dies or runs past
    ``timeout`` seconds."""
    if torch.device(device).type == "cuda":
        fn = make_fn(*args)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2 ** 20
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(make_fn, args, results))
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by the child's malloc at start
    try:
        proc.start()
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    try:
        status, value = _wait_for_child(proc, results, timeout)
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        raise PeakMemoryError(f"peak-memory measurement of {getattr(make_fn, '__name__', make_fn)}"
                              f"{args!r:.200}: {value}")
    return value


def layer_benchmark(batch_sizes=(1, 2, 4), iters=10, device="cpu", attention_groups=(0, 8),
                    shapes=RESNET50_3X3_SHAPES, paths=(None,), clock="wall",
                    modes=("forward", "forward+backward")):
    """AWConv2d against nn.Conv2d at ``shapes`` (stage, C, H, W); one row per setting.

    "forward" runs under no_grad. "forward+backward" is the step a network runs: the input
    requires grad (its gradient is computed, as for every layer but the first) and the
    parameter gradients start from None, as after ``zero_grad()``. ``paths`` adds rows with
    a forced formulation (None: the default policy; "triton": the fused kernel)."""
    from aw_detection.layers import AWConv2d

    rows = []
    for stage, c, h, w in shapes:
        layers = {"conv": torch.nn.Conv2d(c, c, 3, padding=1, bias=False)}
        for g in attention_groups:
            for path in paths:
                name = f"aw(G={g or c})" + (f" {path}" if path else "")
                layers[name] = AWConv2d(c, c, 3, padding=1, attention_groups=g, path=path)
        layers = {k: v.to(device) for k, v in layers.items()}
        for n in batch_sizes:
            x = torch.randn(n, c, h, w, device=device)
            for mode in modes:
                steps = {k: _layer_step(v, x, mode == "forward") for k, v in layers.items()
                         if not (k.endswith(" plain") and n > 1)}
                seconds = time_interleaved(steps, iters, device=device, clock=clock)
                for name, s in seconds.items():
                    rows.append({"stage": stage, "batch": n, "mode": mode, "layer": name,
                                 "ms": 1000 * s, "ratio": s / seconds["conv"]})
    return rows


def _layer_step(layer, x, inference):
    if inference:
        def run():
            with torch.no_grad():
                layer(x)
    else:
        x = x.detach().requires_grad_()

        def run():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).sum().backward()
    return run


def _make_aa_step(channels, h, w, impl, device="cpu"):
    from aw_detection.layers import AAConv2d, relative_logits_2d_naive

    torch.manual_seed(0)
    layer = AAConv2d(channels, channels, 3, heads=8, max_size=max(h, w),
                     fused=impl == "fused").to(device).eval()
    if impl == "naive":
        layer.attention_branch.relative_logits = relative_logits_2d_naive
    x = torch.randn(1, channels, h, w, device=device)

    def run():
        with torch.no_grad():
            layer(x)
    return run


def aa_memory_benchmark(iters=5, device="cpu", stages=RESNET50_3X3_SHAPES[1:], clock="wall"):
    """AAConv2d (one image, stride 1) with fused SDPA, with an explicit softmax, and with the
    naive (HW, HW, d) relative embedding: median ms and peak extra memory."""
    rows = []
    for stage, c, h, w in stages:
        steps = {impl: _make_aa_step(c, h, w, impl, device)
                 for impl in ("fused", "explicit", "naive")}
        seconds = time_interleaved(steps, iters, warmup=1, device=device, clock=clock)
        for impl in ("fused", "explicit", "naive"):
            peak, error = _peak_or_error(_make_aa_step, c, h, w, impl, device, device=device)
            rows.append({"stage": stage, "size": f"{h}x{w}", "impl": impl, "ms": 1000 * seconds[impl],
                         "peak_mb": peak, "peak_error": error})
    return rows


def _peak_or_error(make_fn, *args, device):
    """(MiB, None), or (None, reason) when the measurement failed: a benchmark keeps its
    timings when one memory measurement fails."""
    try:
        return peak_memory_mb(make_fn, *args, device=device), None
    except PeakMemoryError as e:
        return None, str(e)


def synthetic_batch(cfg, batch_size, train, seed=0, size=None):
    """Images (and, for training, 8 boxes per image, with box-filling masks for mask models)
    at the config's input size (a 4:3 image; ``size``: (h, w) instead): the same batch for
    every model compared, without needing the dataset on disk."""
    from detectron2.structures import BitMasks, Boxes, Instances

    from aw_detection.data import image_size

    gen = torch.Generator().manual_seed(seed)
    retinanet = cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    num_classes = (cfg.MODEL.RETINANET if retinanet else cfg.MODEL.ROI_HEADS).NUM_CLASSES
    h, w = size or image_size(cfg, train)
    batch = []
    for _ in range(batch_size):
        item = {"image": torch.randint(0, 256, (3, h, w), generator=gen).float(),
                "height": h, "width": w}
        if train:
            xy = torch.rand(8, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
            wh = (0.1 + torch.rand(8, 2, generator=gen) * 0.2) * torch.tensor([w, h])
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
            inst.gt_classes = torch.randint(0, num_classes, (8,), generator=gen)
            if cfg.MODEL.MASK_ON:
                ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None] + 0.5
                x0, y0, x1, y1 = inst.gt_boxes.tensor.T[:, :, None, None]
                inst.gt_masks = BitMasks((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1))
            item["instances"] = inst
        batch.append(item)
    return batch


def _model_step(model, batch, train, optimizer=None, amp=False):
    """One step; ``amp``: the forward under autocast (float16 on GPU, bfloat16 on CPU; the
    backward follows it)."""
    from detectron2.utils.events import EventStorage

    device = next(model.parameters()).device.type
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    autocast = functools.partial(torch.autocast, device, dtype=dtype, enabled=amp)
    if train:
        def run():
            with EventStorage(), autocast():  # Detectron2's losses log into the storage
                losses = model(batch)
            sum(losses.values()).backward()
            if optimizer is not None:
                optimizer.step()
            model.zero_grad(set_to_none=True)
    else:
        def run():
            with torch.no_grad(), autocast():
                model(batch)
    return run


def share_weights(source, target):
    """Copy ``source``'s parameters and buffers into ``target`` where names and shapes match;
    returns how many. A fresh AW network given the baseline's weights computes the baseline's
    function, so both see the same proposals: the cost of RoIAlign and NMS depends on the
    proposals' number and size, and unrelated random weights made it differ by tens of ms per
    training step (measured, docs/BENCHMARKS.md)."""
    own = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)
    return len(shared)


def _optimizer(cfg, model):
    """The config's optimizer (Detectron2's, with its parameter groups) at learning rate 0: the
    update costs what it costs in training, and the weights stay, so a model with random weights
    on random images cannot diverge and the candidates keep the same proposals."""
    from aw_detection.engine import Trainer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR = 0.0
    return Trainer.build_optimizer(cfg, model)


def _make_model_step(cfg, batch_size, train, optimizer=False):
    from detectron2.modeling import build_model

    model = build_model(cfg)
    model.train(train)
    return _model_step(model, synthetic_batch(cfg, batch_size, train), train,
                       _optimizer(cfg, model) if optimizer else None)


def model_benchmark(named_cfgs, task="inference", iters=10, batch_size=1, memory=True,
                    clock="wall", optimizer=False):
    """One row per (name, cfg): params, GFLOPs, median s/iter (interleaved), ratio, peak MiB
    (None with ``peak_memory_error`` when that measurement failed). ``optimizer`` (training
    only): the step ends with the config's optimizer update, as Detectron2's trainer's does. The timed candidates share the first one's weights (``share_weights``);
    the peak-memory child builds its model alone, with its own random weights, and its peak
    includes the optimizer's state."""
    from aw_detection.evaluation.statistics import model_statistics

    from detectron2.modeling import build_model

    train = task == "train"
    if optimizer and not train:
        raise ValueError("optimizer: only a training step updates the weights")
    rows, steps = [], {}
    device = named_cfgs[0][1].MODEL.DEVICE
    reference = None
    for name, cfg in named_cfgs:
        model = build_model(cfg)
        if reference is None:
            reference = model
        else:
            share_weights(reference, model)
        stats = model_statistics(cfg, model=model)
        model.train(train)
        steps[name] = _model_step(model, synthetic_batch(cfg, batch_size, train), train,
                                  _optimizer(cfg, model) if optimizer else None)
        rows.append({"config": name, "params": stats["params"], "gflops": stats["gflops"],
                     "input": stats["input"]})
    seconds = time_interleaved(steps, iters, device=device, clock=clock)
    first = seconds[rows[0]["config"]]
    for row, (name, cfg) in zip(rows, named_cfgs):
        row.update(task=task, batch_size=batch_size, device=device, optimizer=optimizer,
                   seconds_per_iter=seconds[name], ratio_to_first=seconds[name] / first)
        peak, error = (_peak_or_error(_make_model_step, cfg, batch_size, train, optimizer,
                                      device=device) if memory else (None, None))
        row.update(peak_memory_mb=peak, peak_memory_error=error)
    return rows


def export_benchmark(named_cfgs, iters=10, batch=1, warmup=2, clock="wall"):
    """Eager vs TorchScript vs onnxruntime for each (name, cfg), interleaved in one process:
    median seconds per image (``clock`` as in ``time_interleaved``) and the ratio to the
    config's eager model."""
    from detectron2.modeling import build_model

    from aw_detection.export import export_model, load_exported, traceable_model

    steps, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="aw_export_bench") as tmp:
        for name, cfg in named_cfgs:
            model = build_model(cfg).eval()
            images = [item["image"] for item in synthetic_batch(cfg, batch, train=False)]
            adapter = traceable_model(model, images)
            steps[(name, "eager")] = lambda a=adapter, x=images: a(*x)
            for fmt, runtime in (("torchscript", "torchscript"), ("onnx", "onnxruntime")):
                path = export_model(adapter, images, fmt, os.path.join(tmp, name, fmt))
                run = load_exported(path)
                steps[(name, runtime)] = lambda r=run, x=images: r(*x)
            rows += [{"config": name, "runtime": r, "input": list(images[0].shape[1:]),
                      "batch": batch} for r in ("eager", "torchscript", "onnxruntime")]
        seconds = time_interleaved(steps, iters, warmup, device=named_cfgs[0][1].MODEL.DEVICE,
                                   clock=clock)
    for row in rows:
        row["seconds_per_image"] = seconds[(row["config"], row["runtime"])] / batch
        row["ratio_to_eager"] = (seconds[(row["config"], row["runtime"])]
                                 / seconds[(row["config"], "eager")])
    return rows


def export_benchmark_table(rows):
    """Markdown table of :func:`export_benchmark` rows."""
    from tabulate import tabulate

    h, w = rows[0]["input"]
    return tabulate([[r["config"], r["runtime"], f'{r["seconds_per_image"]:.4f}',
                      f'{r["ratio_to_eager"]:.2f}x'] for r in rows],
                    headers=["config", "runtime", f"s/img ({h}x{w}, batch {rows[0]['batch']})",
                             "vs eager"], tablefmt="github")
