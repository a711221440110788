"""A study's runs: their commands and folders, their records (``study_run.json``), and the job
that trains one of them under submitit (resumed from its last checkpoint after a kill, a
preemption or a time-out)."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import zlib

import submitit

from aw_detection.experiments.study.spec import MODULES, ROOT

__all__ = ["plan_runs", "run_state", "read_record", "write_record", "label", "TrainJob",
           "last_error", "num_gpus"]

RECORD = "study_run.json"
LOG = "study.log"  # the run's stdout and stderr


def relative(path):
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _command(task, config, args, opts, seed, output_dir, weights=None):
    """The tool's argument list (without the interpreter): what identifies a run."""
    subst = [a.replace("{seed}", str(seed)) for a in args]
    opts = [o.replace("{seed}", str(seed)) for o in opts]
    weights = ["MODEL.WEIGHTS", weights] if weights else []
    return ["-m", MODULES[task], "--config-file", relative(config), *subst,
            *weights, *opts, "SEED", str(seed), "OUTPUT_DIR", output_dir]


def plan_runs(spec, output, extra_opts=(), seeds=None):
    """(pre-training runs, arm runs): dicts with kind, arm/pretrain name, seed, dir, args."""
    seeds = spec["seeds"] if seeds is None else seeds
    # Relative to the study's output, so that studies under one folder can share pre-training.
    pre_root = os.path.normpath(os.path.join(output, spec["pretrain_output"] or "pretrain"))
    opts = list(spec["opts"])
    pretrain, arms = {}, []
    for seed in seeds:
        for arm in spec["arms"]:
            weights = None
            if arm["pretrain"]:
                name = arm["pretrain"]
                entry = spec["pretrain"][name]
                directory = os.path.join(pre_root, name, f"seed{seed}")
                pretrain[(name, seed)] = {
                    "kind": "pretrain", "name": name, "seed": seed, "task": "classification",
                    "dir": directory,
                    "args": _command("classification", entry["config"], spec["classification_args"],
                                     opts + entry["opts"] + list(extra_opts), seed, directory)}
                weights = os.path.join(directory, "model_final.pth")
            directory = os.path.join(output, arm["name"], f"seed{seed}")
            args = spec["detection_args"] if arm["task"] == "detection" else spec["classification_args"]
            arms.append({"kind": "arm", "name": arm["name"], "seed": seed, "task": arm["task"],
                         "dir": directory, "pretrain": arm["pretrain"],
                         "args": _command(arm["task"], arm["config"], args,
                                          opts + arm["opts"] + list(extra_opts), seed, directory,
                                          weights)})
    return list(pretrain.values()), arms


def label(run):
    return f"{'pretrain ' if run['kind'] == 'pretrain' else ''}{run['name']} seed {run['seed']}"


def num_gpus(run):
    """The run's ``--num-gpus`` (train_net's default: 1)."""
    args = run["args"]
    return int(args[args.index("--num-gpus") + 1]) if "--num-gpus" in args else 1


def read_record(run):
    path = os.path.join(run["dir"], RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_record(run, status, **fields):
    """study_run.json: the run's command, status (submitted, started, interrupted, failed,
    finished) and what goes with it (job id, host, pid, seconds, error)."""
    os.makedirs(run["dir"], exist_ok=True)
    path = os.path.join(run["dir"], RECORD)
    kept = {}
    if status != "submitted" and os.path.exists(path):  # where the job runs, set at submission
        with open(path) as f:
            kept = {k: v for k, v in json.load(f).items() if k in ("launcher", "folder", "host")}
    record = {"args": run["args"], "status": status, **kept, **fields}
    with open(path + ".tmp", "w") as f:  # the driver reads it while the job writes it
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def _arguments(command):
    """A run's arguments without how it was launched (``-m module``; records written before
    runs were launched by module begin with a tools/ script)."""
    return command[command.index("--config-file"):]


def run_state(run):
    """"finished", "partial" (resumable), "new", or "other" (made with another command)."""
    record = read_record(run)
    if record is None:
        return "new"
    if _arguments(record["args"]) != _arguments(run["args"]):
        return "other"
    if record["status"] == "finished":
        return "finished"
    return "partial" if os.path.exists(os.path.join(run["dir"], "last_checkpoint")) else "new"


def last_error(run_dir, lines=40):
    """The last line of the run's log that names an error (else its last line), or None."""
    path = os.path.join(run_dir, LOG)
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        tail = [line.rstrip() for line in f.readlines()[-lines:] if line.strip()]
    errors = [line for line in tail if re.search(r"(Error|Exception|^error)\b", line)]
    return (errors or tail or [None])[-1]


def _stop(child, seconds=60):
    """Terminate the child and reap it. Not with Popen.wait: submitit calls checkpoint from a
    signal handler that interrupted the job's own wait on the child, which holds Popen's lock."""
    child.terminate()
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if os.waitpid(child.pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # reaped already
            return
        time.sleep(0.1)
    child.kill()


class TrainJob(submitit.helpers.Checkpointable):
    """Trains one run (``python -m aw_detection.engine.train_net ...`` in a child process,
    output to the run's study.log). On a preemption or time-out submitit calls
    :meth:`checkpoint`: the child is stopped and the job requeued; the requeued job, like a
    run restarted after a kill, resumes from the run's last checkpoint (Detectron2's
    ``--resume``). On several nodes each node starts Detectron2's launch with its rank."""

    def __init__(self, run, threads):
        self.run, self.threads = run, threads
        self._child = None

    def __getstate__(self):  # pickled when submitted and when requeued: not the child
        return {"run": self.run, "threads": self.threads, "_child": None}

    def arguments(self, env):
        run = self.run
        args = list(run["args"])
        flags = []  # before --config-file, where the run's identity (_arguments) ignores them
        if os.path.exists(os.path.join(run["dir"], "last_checkpoint")):
            flags.append("--resume")
        if env.num_nodes > 1:
            port = 20000 + zlib.crc32(str(env.job_id).encode()) % 20000
            flags += ["--num-machines", str(env.num_nodes), "--machine-rank", str(env.node),
                      "--dist-url", f"tcp://{env.hostnames[0]}:{port}"]
        at = args.index("--config-file")
        return args[:at] + flags + args[at:]

    def __call__(self):
        env = submitit.JobEnvironment()
        lead = env.global_rank == 0
        args = self.arguments(env)
        if lead:
            write_record(self.run, "started", job_id=env.job_id, host=socket.gethostname(),
                         pid=os.getpid(), resumed="--resume" in args)
        start = time.time()
        child_env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(self.threads))
        os.makedirs(self.run["dir"], exist_ok=True)
        name = LOG if env.node == 0 else f"study.node{env.node}.log"  # a log per node
        with open(os.path.join(self.run["dir"], name), "a") as log:
            gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
            log.write(f"[study] job {env.job_id}" + (f", CUDA_VISIBLE_DEVICES={gpus}" if gpus else "")
                      + f": {' '.join(args)}\n")
            log.flush()
            self._child = subprocess.Popen([sys.executable, *args], stdout=log,
                                           stderr=subprocess.STDOUT, env=child_env, cwd=ROOT)
            code = self._child.wait()
        if code != 0:
            error = last_error(self.run["dir"]) or f"exit status {code}"
            if lead:
                write_record(self.run, "failed", job_id=env.job_id, error=error)
            raise RuntimeError(f"{label(self.run)} failed: {error} (log: "
                               f"{os.path.join(self.run['dir'], LOG)})")
        seconds = round(time.time() - start, 1)
        if lead:
            write_record(self.run, "finished", job_id=env.job_id, seconds=seconds)
        return seconds

    def checkpoint(self, *args, **kwargs):
        """Stop the child (its last checkpoint is on disk) and requeue this job."""
        if self._child is not None:
            _stop(self._child)
        write_record(self.run, "interrupted", job_id=submitit.JobEnvironment().job_id)
        return submitit.helpers.DelayedSubmission(TrainJob(self.run, self.threads))
