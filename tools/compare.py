#!/usr/bin/env python
"""Compare runs of tools/train_net.py against the first (the baseline).

    tools/compare.py output/base output/aw output/se_aw [--seeds] [--output DIR]

Prints a Markdown table (AP, AP50, AP75, APs, APm, APl with Δ vs the baseline, params,
GFLOPs, train s/iter, inference s/img) and writes comparison.md, .csv and .png.
"""
import argparse
import os
import sys

import aw_detection  # noqa: F401  (registers backbones for the model statistics)
from aw_detection.experiments.compare import compare_runs, group_by_config, load_run, write_comparison


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="OUTPUT_DIRs; the first is the baseline")
    p.add_argument("--seeds", action="store_true", help="group runs of the same config: mean ± std")
    p.add_argument("--dataset", help="dataset in eval_results.json (default: the first)")
    p.add_argument("--output", help="where to write comparison.* (default: the runs' parent folder)")
    p.add_argument("--title", default="Comparison")
    args = p.parse_args(argv)

    rows = []
    for run in args.runs:
        if not os.path.exists(os.path.join(run, "eval_results.json")):
            sys.exit(f"compare: {run} has no eval_results.json; train or evaluate it with "
                     "tools/train_net.py first")
        rows.append(load_run(run, args.dataset))
    if args.seeds:
        rows = group_by_config(rows)
    output = args.output or os.path.dirname(os.path.abspath(args.runs[0]))
    print(write_comparison(compare_runs(rows), output, args.title))
    print(f"written: {os.path.join(output, 'comparison.md')}, .csv, .png")


if __name__ == "__main__":
    main()
