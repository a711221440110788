#!/usr/bin/env python
"""Run a study: every arm of a spec x every seed, in parallel and resumably, then study.md,
study.json and study.png with per-arm mean +- std and paired deltas to the baseline arm
(95% t-intervals over seeds). See aw_detection/study.py for the spec format.

    tools/study.py configs/studies/from_scratch.yaml                # train what is missing, report
    tools/study.py configs/studies/from_scratch.yaml --report-only  # rebuild the report only
    tools/study.py SPEC --seeds 1,2 --jobs 2 --output out/x SOLVER.MAX_ITER 20   # a smoke run

Trailing KEY VALUE overrides apply to every run (pre-training too). Runs go --jobs at a time
with cores // jobs threads each; finished runs are reused, killed ones resume.
"""
import argparse
import os
import shlex
import sys
import time

from aw_detection.engine.cli import user_errors
from aw_detection.experiments.study import (ROOT, collect_results, included_seeds, load_spec, plan_runs,
                                run_study, write_report)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="study spec (YAML), e.g. configs/studies/from_scratch.yaml")
    p.add_argument("--output", help="study folder (default: output/studies/<spec name>)")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], metavar="S1,S2,...",
                   help="only these seeds (default: the spec's)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained at once (default: 2, or 1 on a single core)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing; rebuild the report from the finished runs")
    p.add_argument("--include", action="append", default=[], metavar="STUDY_JSON",
                   help="take the seeds of an earlier report of this study (e.g. trained on "
                        "another machine) that are not finished here: they are not trained")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state only")
    p.add_argument("--force", action="store_true",
                   help="retrain finished runs and runs made with another command")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="overrides for every run")
    args = p.parse_intermixed_args()  # flags may follow the spec and the overrides
    if args.jobs < 1:
        p.error("--jobs must be at least 1")

    with user_errors(args.debug):
        spec = load_spec(args.spec)
        if args.seeds:
            spec["seeds"] = args.seeds
        output = os.path.abspath(args.output or os.path.join(ROOT, "output", "studies", spec["name"]))
        pretrain, arms = plan_runs(spec, output, args.opts)
        included = included_seeds(args.include, spec, arms)
        if included:  # those seeds are not trained here
            pretrain, arms = plan_runs(spec, output, args.opts,
                                       [s for s in spec["seeds"] if s not in included])
        if args.dry_run:
            from aw_detection.experiments.study import run_state
            for run in pretrain + arms:
                print(f"[{run_state(run)}] {' '.join(shlex.quote(a) for a in run['args'])}")
            return
        start = time.time()
        failures = [] if args.report_only else run_study(pretrain, arms, args.jobs, args.force)
        rows, missing = collect_results(pretrain, arms)
        rows += [row for seed in sorted(included) for row in included[seed]]
        command = " ".join(shlex.quote(a) for a in ["python", "tools/study.py", *sys.argv[1:]]
                           if a not in ("--report-only", "--force", "--debug"))
        print(write_report(spec, output, rows, missing, command))
        print(f"study: {output}/study.md, study.json, study.png ({(time.time() - start) / 60:.1f} min)")
        if failures:
            sys.exit("failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
