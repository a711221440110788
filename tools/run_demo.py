#!/usr/bin/env python
"""`make demo`: train and evaluate the baseline and AW variants on the embedded shapes data
with the same schedule and seed, then print and save the comparison.

    tools/run_demo.py [--output output/demo] [--configs NAME ...] [--jobs 2] [--force] [KEY VALUE ...]

Runs go --jobs at a time with one thread each: on a 2-core CPU two single-threaded trainings
finish sooner than two two-threaded ones in turn. Finished runs (with eval_results.json) are
reused unless --force. Full logs: RUN/log.txt.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ["shapes_R_18_FPN", "shapes_R_18_FPN_aw", "shapes_R_18_FPN_se_aw",
                   "shapes_R_18_FPN_cbam_aw"]
PROGRESS = re.compile(r"eta: (\S+)\s+iter: (\d+)\s+total_loss: (\S+)")


def train(name, index, total, output, opts, threads):
    config = os.path.join(ROOT, "configs", "demo", f"{name}.yaml")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
           *opts, "OUTPUT_DIR", output]
    print(f"[{index}/{total}] {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = PROGRESS.search(line)
        if match:
            eta, it, loss = match.groups()
            print(f"  [{index}/{total}] {name}  iter {int(it) + 1}  loss {loss}  eta {eta}", flush=True)
        elif "Start inference" in line:
            print(f"  [{index}/{total}] {name}  evaluating ...", flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"{name} failed; last lines:\n{''.join(tail)}")
    print(f"  [{index}/{total}] {name} done in {time.time() - start:.0f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help="names under configs/demo/; the first is the baseline")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained at once (default: 2, or 1 on a single core)")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = p.parse_args()

    start = time.time()
    runs = [os.path.join(args.output, name) for name in args.configs]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = []
        for i, (name, run) in enumerate(zip(args.configs, runs), 1):
            if os.path.exists(os.path.join(run, "eval_results.json")) and not args.force:
                print(f"[{i}/{len(runs)}] {name}: finished earlier ({run}); --force retrains")
                continue
            jobs.append(pool.submit(train, name, i, len(runs), run, args.opts, threads))
        for job in jobs:
            try:
                job.result()
            except RuntimeError as e:
                sys.exit(str(e))
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compare.py"), *runs,
                    "--output", args.output, "--title", "make demo: shapes_val"], check=True,
                   env=dict(os.environ, PYTHONWARNINGS="ignore"))
    print(f"demo finished in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
