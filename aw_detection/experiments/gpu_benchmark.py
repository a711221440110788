"""The GPU benchmark (``tools/benchmark.py --preset gpu``): AW's cost at the scale users train.

R-50-FPN Faster R-CNN at 800x1333 (train step at batch 2, inference at batch 1, float32 and
AMP), the ResNet-50 3x3 layer table (N = 2 and 8, forward+backward) and an R-50 classification
train step (224 px, batch 64); every AW arm once per kernel (MODEL.AW.KERNEL cudnn / triton).
Arms are timed interleaved (CUDA events, median after warm-up); peak memory is
``torch.cuda.max_memory_allocated`` during one step, above what was allocated before it, plus
the arm's own parameters. On CPU the same code runs a tiny smoke version (narrow networks,
small images, two iterations; Triton through its interpreter when ``TRITON_INTERPRET=1``), so
the GPU run cannot rot between GPU sessions.
"""
import datetime
import json
import os
import platform
import time

import torch
from tabulate import tabulate

from aw_detection.experiments.benchmark import (RESNET50_3X3_SHAPES, _model_step, layer_benchmark, share_weights,
                        synthetic_batch, time_interleaved)
from aw_detection.config import load_config

__all__ = ["GOALS", "gpu_benchmark"]

# (name, config suffix, whether it has AW layers and so one arm per kernel)
DETECTOR_ARMS = [("baseline", "", False), ("AW-full", "_aw", True), ("AW-lite", "_aw_lite", True),
                 ("SE+AW", "_se_aw", True), ("AA", "_aa", False)]
CLASSIFIER_ARMS = [("baseline", "", False), ("AW-full", "_aw", True), ("AW-lite", "_aw_lite", True)]
KERNELS = ("cudnn", "triton")

# (section, mode, arm) -> the largest time ratio to the baseline that is "done" for the project
# (GPU goals of the fused-kernel issue); "memory" rows bound the training peak.
GOALS = {("detector", "train", "AW-lite"): 1.10, ("detector", "train", "AW-full"): 1.20,
         ("detector", "inference", "AW-lite"): 1.05, ("detector", "inference", "AW-full"): 1.05,
         ("classification", "train", "AW-lite"): 1.20,
         ("memory", "train", "AW-lite"): 1.15, ("memory", "train", "AW-full"): 1.15}

FULL = dict(size=(800, 1333), train_batch=2, test_batch=1, cls_size=224, cls_batch=64,
            layer_batches=(2, 8), layer_shapes=RESNET50_3X3_SHAPES, iters=20, warmup=3, opts=[],
            detector_modes=[("train", False), ("train", True), ("inference", False), ("inference", True)],
            classifier_modes=[("train", False), ("train", True)])
# Narrow networks on small images: every code path of the full run in seconds on a CPU.
# AW in res5 only and each step kind once (Triton's interpreter takes ~0.4 s per AW layer
# and training step).
SMOKE = dict(size=(64, 96), train_batch=2, test_batch=1, cls_size=32, cls_batch=2,
             layer_batches=(2,), layer_shapes=[("res4", 16, 6, 7)], iters=1, warmup=0,
             detector_modes=[("train", False), ("inference", True)], classifier_modes=[("train", True)],
             opts=["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
                   "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.FPN.OUT_CHANNELS", "16",
                   "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                   "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "64",
                   "MODEL.CLASSIFIER.NUM_CLASSES", "10", "MODEL.AW.STAGES", "['res5']"])


def _versions(device):
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def _arms(arms, config_prefix, opts):
    """[(arm, kernel, cfg)]: one row per arm without AW, one per kernel for each AW arm."""
    out = []
    for name, suffix, has_aw in arms:
        for kernel in KERNELS if has_aw else (None,):
            extra = ["MODEL.AW.KERNEL", kernel] if kernel else []
            out.append((name, kernel, load_config(f"{config_prefix}{suffix}.yaml", [*opts, *extra])))
    return out


def _first_step(model, step, device):
    """Runs one step (the warm-up's first): (peak MiB, the AWConv2d formulations it ran). The
    peak (CUDA) is the memory above what was allocated before the step, plus the parameters."""
    from aw_detection.layers import AWConv2d

    paths = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: paths.add(m.conv_path(args[0])))
             for m in model.modules() if isinstance(m, AWConv2d)]
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    if device != "cuda":
        return None, sorted(paths)
    torch.cuda.synchronize()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (torch.cuda.max_memory_allocated() - before + params) / 2 ** 20, sorted(paths)


def _time_models(section, arms, batches, modes, preset, device):
    """Rows of one section: every (mode, amp) timed with all arms interleaved."""
    from detectron2.modeling import build_model

    models, reference = [], None
    for name, kernel, cfg in arms:
        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        if reference is None:
            reference = model
        else:  # the baseline's function: the same proposals, so RoIAlign and NMS cost alike
            share_weights(reference, model)
        models.append((name, kernel, model))
    rows = []
    for mode, amp in modes:
        train = mode == "train"
        batch = batches[mode]
        steps, first = {}, {}
        for name, kernel, model in models:
            model.train(train)
            steps[(name, kernel)] = _model_step(model, batch, train, amp=amp)
            first[(name, kernel)] = _first_step(model, steps[(name, kernel)], device)
        seconds = time_interleaved(steps, preset["iters"], preset["warmup"], device=device)
        base, base_peak = seconds[("baseline", None)], first[("baseline", None)][0]
        for name, kernel, model in models:
            peak, paths = first[(name, kernel)]
            rows.append({"section": section, "mode": mode, "amp": amp, "arm": name, "kernel": kernel,
                         "batch": len(batch) if isinstance(batch, list) else len(batch["label"]),
                         "paths": paths, "s_per_iter": seconds[(name, kernel)],
                         "ratio": seconds[(name, kernel)] / base, "peak_mib": peak,
                         "memory_ratio": peak / base_peak if peak else None})
    return rows


def _classification_batch(cfg, size, batch, device):
    gen = torch.Generator().manual_seed(0)
    return {"image": torch.randint(0, 256, (batch, 3, size, size), generator=gen).float().to(device),
            "label": torch.randint(0, cfg.MODEL.CLASSIFIER.NUM_CLASSES, (batch,), generator=gen).to(device)}


def _layer_rows(preset, device):
    rows = layer_benchmark(preset["layer_batches"], preset["iters"], device,
                           shapes=preset["layer_shapes"], paths=(None, "triton"),
                           modes=("forward+backward",))
    return [{"section": "layer", **r} for r in rows]


def triton_faster(layer_rows, shapes=RESNET50_3X3_SHAPES):
    """TRITON_FASTER keys (``AWConv2d.triton_shape``) of the layers where the fused kernel was
    faster than the default formulation at every batch size measured."""
    from aw_detection.layers import AWConv2d

    faster = []
    for stage, c, _, _ in shapes:
        for g in (0, 8):
            name = f"aw(G={g or c})"
            pairs = [(r["ms"], next(o["ms"] for o in layer_rows if o["stage"] == stage and
                                    o["batch"] == r["batch"] and o["layer"] == name + " triton"))
                     for r in layer_rows if r["stage"] == stage and r["layer"] == name]
            if pairs and all(triton < default for default, triton in pairs):
                faster.append(AWConv2d(c, c, 3, padding=1, attention_groups=g).triton_shape())
    return faster


def _goal_rows(rows):
    out = []
    for (section, mode, arm), goal in GOALS.items():
        field = "memory_ratio" if section == "memory" else "ratio"
        source = "detector" if section == "memory" else section
        for r in rows:
            if r["section"] == source and r["mode"] == mode and r["arm"] == arm and r[field]:
                out.append([section, f"{mode}{' AMP' if r['amp'] else ''}", arm, r["kernel"],
                            f"≤ {goal:.2f}x", f"{r[field]:.2f}x", "yes" if r[field] <= goal else "no"])
    return out


def _markdown(info, rows, command, seconds):
    lines = [f"# GPU benchmark: {info.get('gpu', info['device'])}", "",
             f"`{command}` ({seconds:.0f} s), {info['date']}: torch {info['torch']}, "
             f"CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, Triton {info['triton']}.", ""]
    if info["smoke"]:
        lines += ["A smoke run (narrow networks, tiny inputs, Triton interpreted): it checks the "
                  "code, its times mean nothing.", ""]
    for section, title in (("detector", "R-50-FPN Faster R-CNN"), ("classification", "R-50 classifier train step"),):
        table = [[r["mode"] + (" AMP" if r["amp"] else ""), r["batch"], r["arm"], r["kernel"] or "-",
                  ", ".join(r["paths"]) or "-",
                  f"{r['s_per_iter']:.4f}", f"{r['ratio']:.2f}x",
                  "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
                  "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}x"]
                 for r in rows if r["section"] == section]
        if table:
            lines += [f"## {title}", "", tabulate(table, ["step", "batch", "arm", "kernel", "ran", "s/iter",
                                                          "vs baseline", "peak MiB", "memory"],
                                                  tablefmt="github"), ""]
    layer = [[r["stage"], r["batch"], r["layer"], f"{r['ms']:.2f}", f"{r['ratio']:.2f}x"]
             for r in rows if r["section"] == "layer"]
    if layer:
        lines += ["## ResNet-50 3x3 layers, forward+backward", "",
                  tabulate(layer, ["stage", "N", "layer", "ms", "vs conv"], tablefmt="github"), ""]
    goals = _goal_rows(rows)
    if goals:
        lines += ["## Goals", "", tabulate(goals, ["", "step", "arm", "kernel", "goal", "measured", "met"],
                                            tablefmt="github"), ""]
    lines += ["TRITON_FASTER candidates (layers/aw_conv.py): "
              f"`{info.get('triton_faster', [])}`", ""]
    return "\n".join(lines)


def gpu_benchmark(config_dir, output_dir, device=None, smoke=None, command="", sections=None, log=print):
    """Runs the preset and writes ``gpu_benchmark.{md,json}`` into ``output_dir`` after each
    section (a run cut short keeps what it measured); returns the JSON dict. ``smoke``
    defaults to "not on CUDA"."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device != "cuda" if smoke is None else smoke
    preset = SMOKE if smoke else FULL
    sections = sections or ("layer", "detector", "classification")
    info = {**_versions(device), "smoke": smoke}
    os.makedirs(output_dir, exist_ok=True)
    rows, start = [], time.perf_counter()
    for section in sections:
        log(f"[gpu benchmark] {section} ({time.perf_counter() - start:.0f} s so far)")
        if section == "layer":
            rows += _layer_rows(preset, device)
            info["triton_faster"] = triton_faster([r for r in rows if r["section"] == "layer"],
                                                  preset["layer_shapes"])
        elif section == "detector":
            prefix = os.path.join(config_dir, "COCO-Detection", "faster_rcnn_R_50_FPN_1x")
            arms = _arms(DETECTOR_ARMS, prefix, preset["opts"])
            cfg = arms[0][2]
            batches = {"train": synthetic_batch(cfg, preset["train_batch"], True, size=preset["size"]),
                       "inference": synthetic_batch(cfg, preset["test_batch"], False, size=preset["size"])}
            rows += _time_models("detector", arms, batches, preset["detector_modes"], preset, device)
        elif section == "classification":
            prefix = os.path.join(config_dir, "classification", "imagenet_R_50")
            arms = _arms(CLASSIFIER_ARMS, prefix, preset["opts"])
            batch = _classification_batch(arms[0][2], preset["cls_size"], preset["cls_batch"], device)
            rows += _time_models("classification", arms, {"train": batch},
                                 preset["classifier_modes"], preset, device)
        else:
            raise ValueError(f"unknown section {section!r}")
        seconds = time.perf_counter() - start
        result = {"info": info, "command": command, "seconds": seconds, "rows": rows}
        with open(os.path.join(output_dir, "gpu_benchmark.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(output_dir, "gpu_benchmark.md"), "w") as f:
            f.write(_markdown(info, rows, command, seconds))
    return result
