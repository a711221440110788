#!/usr/bin/env python
"""Parameters and fvcore GFLOPs of one or more configs, as a Markdown table.

    tools/analyze_model.py --config-file A.yaml [--config-file B.yaml ...] \
        [--height 800 --width 1067] [KEY VALUE ...]
"""
import argparse
import json
import os

from tabulate import tabulate

import aw_detection  # noqa: F401  (registers backbones)
from aw_detection.evaluation.statistics import model_statistics
from aw_detection.engine.cli import user_errors
from aw_detection.config import load_config


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", action="append", required=True, help="repeatable; first = baseline")
    p.add_argument("--height", type=int, help="input height (default: INPUT.MIN_SIZE_TEST)")
    p.add_argument("--width", type=int, help="input width (default: 4/3 of the height)")
    p.add_argument("--output", help="write the rows as JSON")
    p.add_argument("--debug", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    with user_errors(args.debug):
        analyze(args)


def analyze(args):
    rows, base = [], None
    for path in args.config_file:
        cfg = load_config(path, args.opts)
        stats = model_statistics(cfg, args.height, args.width)
        base = base or stats
        rows.append({"config": os.path.basename(path), **stats,
                     "extra_params": stats["params"] - base["params"]})
        print(f"{rows[-1]['config']}: {stats['params']:,} params, {stats['gflops']:.1f} GFLOPs "
              f"({stats['backbone_gflops']:.1f} backbone)", flush=True)
    h, w = rows[0]["input"]
    print(f"\nInput {h}x{w}; deltas against {rows[0]['config']}\n")
    print(tabulate([[r["config"], f'{r["params"] / 1e6:.2f}', f'{r["extra_params"] / 1e6:+.2f}',
                     f'{r["gflops"]:.1f}', f'{r["backbone_gflops"]:.2f}',
                     f'{r["backbone_gflops"] - base["backbone_gflops"]:+.2f}'] for r in rows],
                   headers=["config", "params (M)", "Δ params (M)", "GFLOPs", "backbone GFLOPs",
                            "Δ backbone"], tablefmt="github"))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
