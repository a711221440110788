#!/usr/bin/env python
"""Run a study: every arm of a spec x every seed as submitit jobs (locally or on SLURM),
resumably, then study.md, study.json and study.png with per-arm mean +- std and paired deltas
to the baseline arm (95% t-intervals over seeds). Spec format: aw_detection/experiments/study.

    tools/study.py configs/studies/from_scratch.yaml                # train what is missing, report
    tools/study.py status configs/studies/from_scratch.yaml         # each run's state, report so far
    tools/study.py SPEC --seeds 1,2 --jobs 2 --output out/x SOLVER.MAX_ITER 20   # a smoke run
    tools/study.py configs/studies/coco_R_101_FPN_1x.yaml --launcher slurm --partition gpu \\
        --nodes 1 --time 4320 --mem-gb 256 --cpus-per-task 40 --no-wait

Trailing KEY VALUE overrides apply to every run (pre-training too). Locally, K visible GPUs run
K // g runs of --num-gpus g at once, each pinned to its GPUs; on CPU --jobs runs with
cores // jobs threads each. Finished runs are reused, killed or preempted ones resume.
"""
import argparse
import os
import shlex
import sys
import time

from aw_detection.engine.cli import user_errors
from aw_detection.experiments.study import (ROOT, Resources, check_datasets, collect_results,
                                            describe, included_seeds, label, load_spec, plan_runs,
                                            run_state, run_study, write_report)


def _parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="study spec (YAML), e.g. configs/studies/from_scratch.yaml; "
                                "'status SPEC' prints the state of its runs")
    p.add_argument("--output", help="study folder (default: output/studies/<spec name>)")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], metavar="S1,S2,...",
                   help="only these seeds (default: the spec's)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing; rebuild the report from the finished runs")
    p.add_argument("--include", action="append", default=[], metavar="STUDY_JSON",
                   help="take the seeds of an earlier report of this study (e.g. trained on "
                        "another machine) that are not finished here: they are not trained")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state only")
    p.add_argument("--force", action="store_true",
                   help="retrain finished runs and runs made with another command")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    g = p.add_argument_group("launching (submitit)")
    g.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: jobs on this machine (default); slurm: one SLURM job per run")
    g.add_argument("--jobs", type=int,
                   help="local: runs at once (default: 2 on CPU, or 1 on a single core; on GPUs "
                        "visible GPUs // the runs' --num-gpus)")
    g.add_argument("--gpus", type=lambda s: [int(v) for v in s.split(",") if v], metavar="0,1,...",
                   help="local: the GPUs to use (default: CUDA_VISIBLE_DEVICES, else all; '' "
                        "for none)")
    g.add_argument("--time", type=int, default=72 * 60, metavar="MINUTES",
                   help="time limit of each job (default 4320); a job that reaches it is "
                        "requeued and resumes from its last checkpoint")
    g.add_argument("--partition", help="slurm: partition")
    g.add_argument("--nodes", type=int, default=1,
                   help="slurm: nodes per run (Detectron2's --num-machines; --num-gpus in the "
                        "spec's detection_args is per node)")
    g.add_argument("--mem-gb", type=int, help="slurm: memory per node")
    g.add_argument("--cpus-per-task", type=int, help="slurm: CPUs per node")
    g.add_argument("--no-wait", action="store_true",
                   help="slurm: return once the jobs are submitted (then: status SPEC)")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="overrides for every run")
    return p


def main():
    argv = sys.argv[1:]
    status = argv[:1] == ["status"]
    p = _parser()
    args = p.parse_intermixed_args(argv[1:] if status else argv)  # flags may follow the spec
    if args.jobs is not None and args.jobs < 1:
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
        if args.dry_run or status:
            for run in pretrain + arms:
                print(f"{label(run)}: {describe(run)}" if status else
                      f"[{run_state(run)}] {' '.join(shlex.quote(a) for a in run['args'])}")
            if args.dry_run:
                return
        start = time.time()
        failures = []
        if not (args.report_only or status):
            check_datasets(spec, args.opts)
            resources = Resources(partition=args.partition, nodes=args.nodes, time_min=args.time,
                                  mem_gb=args.mem_gb, cpus_per_task=args.cpus_per_task)
            failures = run_study(pretrain, arms, os.path.join(output, "submitit"), args.launcher,
                                 args.jobs, args.gpus, resources, args.force,
                                 wait=not args.no_wait)
        rows, missing = collect_results(pretrain, arms)
        rows += [row for seed in sorted(included) for row in included[seed]]
        command = " ".join(shlex.quote(a) for a in ["python", "tools/study.py", *argv]
                           if a not in ("status", "--report-only", "--force", "--debug", "--no-wait"))
        print(write_report(spec, output, rows, missing, command))
        print(f"study: {output}/study.md, study.json, study.png ({(time.time() - start) / 60:.1f} min)")
        if failures:
            sys.exit("failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
