#!/usr/bin/env python
"""Cost benchmarks, candidates timed side by side in one process.

    tools/benchmark.py --task layer [--iters 10] [--output layer.json]
"""
import argparse
import json

import torch
from tabulate import tabulate

from aw_detection.benchmark import layer_benchmark


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["layer"], default="layer")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", help="write the rows as JSON")
    args = p.parse_args()

    rows = layer_benchmark(args.batch_sizes, args.iters, args.device)
    print(f"AWConv2d vs nn.Conv2d, ResNet-50 3x3 shapes at 800x1067, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.iters}")
    print(tabulate([[r["stage"], r["batch"], r["mode"], r["layer"], f'{r["ms"]:.1f}',
                     f'{r["ratio"]:.2f}x'] for r in rows],
                   headers=["stage", "N", "mode", "layer", "ms", "vs conv"], tablefmt="github"))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
