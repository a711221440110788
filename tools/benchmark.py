#!/usr/bin/env python
"""Cost benchmarks; candidates are timed interleaved in one process, ratios to the first.

    tools/benchmark.py --task inference --config-file BASE.yaml --config-file AW.yaml
    tools/benchmark.py --task train --config-file BASE.yaml --config-file AW.yaml --iters 5
    tools/benchmark.py --task layer    # AWConv2d vs nn.Conv2d at ResNet-50 3x3 shapes
    tools/benchmark.py --task layer --paths default per_sample grouped triton
    tools/benchmark.py --preset gpu  # docs/BENCHMARKS.md; on CPU a tiny smoke run of it
    tools/benchmark.py --task aa       # AAConv2d time and memory: fused / explicit / naive
    tools/benchmark.py --task export --config-file A.yaml ...  # eager vs TorchScript vs onnxruntime
"""
import argparse
import json
import os

import torch
from tabulate import tabulate

import aw_detection  # noqa: F401  (registers backbones)
from aw_detection.engine.allocator import reuse_freed_memory
from aw_detection.experiments.benchmark import CLOCKS, aa_memory_benchmark, layer_benchmark, model_benchmark
from aw_detection.config import load_config
from aw_detection.experiments.gpu_benchmark import gpu_benchmark
from aw_detection.layers.aw_conv import BATCHED_PATH, PATHS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["inference", "train", "layer", "aa", "export"], default="inference")
    p.add_argument("--preset", choices=["gpu"],
                   help="gpu: detectors at 800x1333, layers and a classifier, every AW arm with "
                        "each kernel; writes gpu_benchmark.{md,json} (a smoke run off CUDA)")
    p.add_argument("--sections", nargs="+", choices=["layer", "detector", "classification"],
                   help="--preset gpu: run only these parts")
    p.add_argument("--output-dir", help="--preset gpu: where the tables go (default: results/ "
                                        "on CUDA, output/gpu_benchmark_smoke elsewhere)")
    p.add_argument("--config-file", action="append", default=[], help="repeatable; first = baseline")
    p.add_argument("--iters", type=int, default=10, help="timed iterations (after warm-up)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4], help="layer task")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--paths", nargs="+", choices=["default", *PATHS], default=["default"],
                   help="layer task: AWConv2d formulations to time (default: the policy's)")
    p.add_argument("--batched-path", choices=["per_sample", "grouped"],
                   help="inference/train tasks: AWConv2d's formulation for batches > 1 on this "
                        "device instead of the policy's (aw_conv.BATCHED_PATH); with --no-memory")
    p.add_argument("--optimizer", action="store_true",
                   help="train task: end each step with the config's optimizer update, as "
                        "Detectron2's trainer does (default: forward, backward, zero_grad)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: CPU time of this process (a shared machine; "
                        "best with OMP_NUM_THREADS=1)")
    p.add_argument("--output", help="write the rows as JSON")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every config")
    args = p.parse_args()
    reuse_freed_memory()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.preset:
        out = args.output_dir or os.path.join(ROOT, "results" if device == "cuda" else
                                              os.path.join("output", "gpu_benchmark_smoke"))
        command = "tools/benchmark.py --preset gpu" + (f" --sections {' '.join(args.sections)}"
                                                       if args.sections else "")
        result = gpu_benchmark(os.path.join(ROOT, "configs"), out, device, command=command,
                               sections=args.sections)
        print(open(os.path.join(out, "gpu_benchmark.md")).read())
        print(f"written: {out}/gpu_benchmark.md, .json ({result['seconds']:.0f} s)")
        return
    if args.clock == "cpu" and device != "cpu":
        p.error("--clock cpu measures CPU work; use --clock wall on a GPU")
    header = f"{device}, {torch.get_num_threads()} threads, median {args.clock} time of {args.iters}"
    if args.batched_path:
        if args.task not in ("inference", "train"):
            p.error("--batched-path is for --task inference/train (the layer task has --paths)")
        if not args.no_memory:  # the peak-memory children would run the default policy
            p.error("--batched-path times this process only: add --no-memory")
        BATCHED_PATH[torch.device(device).type] = dict.fromkeys(("train", "inference"),
                                                                 args.batched_path)
        header += f", AWConv2d batches as {args.batched_path}"

    if args.task == "layer":
        paths = [None if name == "default" else name for name in args.paths]
        rows = layer_benchmark(args.batch_sizes, args.iters, device, paths=paths, clock=args.clock)
        print(f"AWConv2d vs nn.Conv2d, ResNet-50 3x3 shapes at 800x1067, {header}; "
              "forward+backward computes the input gradient too")
        table = [[r["stage"], r["batch"], r["mode"], r["layer"], f'{r["ms"]:.1f}', f'{r["ratio"]:.2f}x']
                 for r in rows]
        headers = ["stage", "N", "mode", "layer", "ms", "vs conv"]
    elif args.task == "aa":
        rows = aa_memory_benchmark(args.iters, device, clock=args.clock)
        print(f"AAConv2d (8 heads, kappa=0.2, nu=0.1, 1 image), {header}")
        table = [[r["stage"], r["size"], r["impl"], f'{r["ms"]:.1f}', _mib(r["peak_mb"])] for r in rows]
        headers = ["stage", "map", "relative logits / attention", "ms", "peak MiB"]
    else:
        if not args.config_file:
            p.error(f"--task {args.task} needs at least one --config-file")
        if args.optimizer and args.task != "train":
            p.error("--optimizer is for --task train")
        named = []
        for path in args.config_file:
            cfg = load_config(path, args.opts)
            cfg.MODEL.DEVICE = device
            named.append((os.path.splitext(os.path.basename(path))[0], cfg))
        if args.task == "export":  # the logic and table live in aw_detection.experiments.benchmark
            from aw_detection.experiments.benchmark import export_benchmark, export_benchmark_table

            rows = export_benchmark(named, args.iters, args.batch_size, clock=args.clock)
            print(f"{header}\n{export_benchmark_table(rows)}")
            if args.output:
                with open(args.output, "w") as f:
                    json.dump(rows, f, indent=2)
            return
        rows = model_benchmark(named, args.task, args.iters, args.batch_size, not args.no_memory,
                               args.clock, args.optimizer)
        h, w = rows[0]["input"]
        step = " (with the optimizer update)" if args.optimizer else ""
        print(f"{args.task}{step}, batch {args.batch_size}, GFLOPs at {h}x{w}, {header}")
        table = [[r["config"], f'{r["params"] / 1e6:.2f}', f'{r["gflops"]:.2f}',
                  f'{r["seconds_per_iter"]:.3f}', f'{r["ratio_to_first"]:.2f}x',
                  _mib(r["peak_memory_mb"])] for r in rows]
        headers = ["config", "params (M)", "GFLOPs", "s/iter", "vs first", "peak MiB"]
    print(tabulate(table, headers=headers, tablefmt="github"))
    for r in rows:
        if r.get("peak_memory_error") or r.get("peak_error"):
            print(f"peak memory not measured: {r.get('peak_memory_error') or r.get('peak_error')}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)


def _mib(value):
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
