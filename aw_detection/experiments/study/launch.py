"""Launching a study's runs through submitit: locally (K visible GPUs: K // g runs of
``--num-gpus g`` at once, each pinned with CUDA_VISIBLE_DEVICES; on CPU ``jobs`` runs with
cores // jobs threads each) or on SLURM (one job per run, the arms depending on their
pre-training job). Runs that finished are reused, unfinished ones resume, live ones are left
alone."""
import os
import re
import socket
import time

import cloudpickle
import submitit

from aw_detection.errors import UserError, few
from aw_detection.experiments.study import runs as runs_module
from aw_detection.experiments.study.runs import (LOG, RECORD, TrainJob, label, last_error, num_gpus,
                                                 read_record, run_state, write_record)

__all__ = ["Resources", "local_slots", "slurm_parameters", "visible_gpus", "run_study", "is_live", "describe"]

PROGRESS = re.compile(r"iter: (\d+)\s+total_loss: (\S+)")
LIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                     "RESIZING", "UNKNOWN"}

# Jobs are pickled by value: a job's process then starts its run without importing this package
# (torch, Detectron2: seconds and hundreds of MB per job) only to unpickle it.
cloudpickle.register_pickle_by_value(runs_module)


class Resources:
    """What a SLURM job asks for (tools/study.py's --partition, --nodes, --time, ...); the GPUs
    per node are each run's ``--num-gpus``. ``time_min`` also bounds a local job (submitit's
    local executor stops a job at its time-out and requeues it)."""

    def __init__(self, partition=None, nodes=1, time_min=72 * 60, mem_gb=None, cpus_per_task=None,
                 signal_delay_s=120, max_requeues=3):
        self.partition, self.nodes, self.time_min = partition, nodes, time_min
        self.mem_gb, self.cpus_per_task = mem_gb, cpus_per_task
        self.signal_delay_s, self.max_requeues = signal_delay_s, max_requeues


def visible_gpus():
    """The local GPUs a study may use: CUDA_VISIBLE_DEVICES (indices) when set, else all."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        import torch

        return list(range(torch.cuda.device_count()))
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"CUDA_VISIBLE_DEVICES={value} does not list GPU indices; name the GPUs "
                        "with --gpus 0,1,...")


def local_slots(gpus, per_run, jobs=None, cores=None):
    """([GPU ids of each slot], threads per run): K GPUs give K // per_run slots (at most
    ``jobs``); no GPUs give ``jobs`` slots (default 2) without GPUs."""
    cores = cores or os.cpu_count() or 1
    if gpus:
        if per_run > len(gpus):
            raise UserError(f"runs of --num-gpus {per_run} need {per_run} GPUs; {len(gpus)} are "
                            f"visible ({gpus})")
        count = len(gpus) // per_run
        slots = [gpus[i * per_run:(i + 1) * per_run] for i in range(min(count, jobs or count))]
    else:
        slots = [[] for _ in range(jobs or min(2, cores))]
    return slots, max(1, cores // len(slots))


def slurm_parameters(resources, run=None, after=None):
    """submitit's SlurmExecutor parameters for the study's jobs, or for the job of ``run``
    (its GPUs per node, its name, after its pre-training job ``after``)."""
    if run is not None:
        return {"gpus_per_node": num_gpus(run), "job_name": label(run).replace(" ", "_"),
                "dependency": f"afterok:{after.job_id}" if after else None}
    params = {"time": int(resources.time_min), "nodes": resources.nodes, "ntasks_per_node": 1,
              "signal_delay_s": resources.signal_delay_s}
    params.update({k: v for k, v in (("partition", resources.partition),
                                      ("cpus_per_task", resources.cpus_per_task),
                                      ("mem", resources.mem_gb and f"{resources.mem_gb}GB")) if v})
    return params


def _executor(launcher, folder, resources):
    if launcher == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=os.path.join(folder, "%j"),
                                              max_num_timeout=resources.max_requeues)
        except RuntimeError as e:  # no srun: not a SLURM machine
            raise UserError(f"--launcher slurm: {e} (run tools/study.py on a SLURM login node)")
        executor.update_parameters(**slurm_parameters(resources))
        return executor
    if launcher != "local":
        raise UserError(f"--launcher must be local or slurm, got {launcher!r}")
    executor = submitit.LocalExecutor(folder=os.path.join(folder, "%j"),
                                      max_num_timeout=resources.max_requeues)
    executor.update_parameters(timeout_min=resources.time_min, signal_delay_s=resources.signal_delay_s)
    return executor


def is_live(record):
    """Whether the job of a run's record may still be running (pending, running, requeued)."""
    if not record or record.get("status") not in ("submitted", "started", "interrupted"):
        return False
    job_id = record.get("job_id")
    if not job_id:
        return False
    if record.get("launcher") == "slurm":
        state = submitit.SlurmJob(record["folder"], str(job_id)).state  # sacct
        return state.split()[0] in LIVE_SLURM_STATES
    if record.get("host") != socket.gethostname():
        return bool(record.get("host"))  # a local job on another machine: this one cannot tell
    try:
        os.kill(int(job_id), 0)  # the job's controller process
    except (OSError, ValueError):
        return False
    try:  # a killed controller whose parent died too stays a zombie until init reaps it
        with open(f"/proc/{int(job_id)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def describe(run):
    """One line: the run's state (done / running / submitted / interrupted / failed / not
    started) with its job, progress or last error."""
    record = read_record(run) or {}
    state, status = run_state(run), record.get("status")
    where = f"job {record.get('job_id')}" + (f" on {record['host']}" if record.get("host") else "")
    progress = _progress(run["dir"])
    if state == "finished":
        return f"done ({record.get('seconds')} s)"
    if state == "other":
        return f"holds a run made with another command (see its {RECORD})"
    if is_live(record):
        return ("submitted, " + where if status == "submitted" else f"running, {where}") + \
            (f", iter {progress[0]} loss {progress[1]}" if progress else "")
    if status == "failed":
        return f"failed: {record.get('error')} (log: {os.path.join(run['dir'], LOG)})"
    if state == "partial":
        return "interrupted, resumes from its last checkpoint" + \
            (f" (logged up to iter {progress[0]})" if progress else "")
    if status:
        return "interrupted before its first checkpoint (starts over)"
    return "not started"


def _progress(run_dir):
    """(iteration, total_loss) of the last progress line of the run's log, or None."""
    path = os.path.join(run_dir, LOG)
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        found = PROGRESS.findall(f.read()[-20000:])
    return (int(found[-1][0]) + 1, found[-1][1]) if found else None


def _check_startable(runs, force):
    clashes = [r["dir"] for r in runs if run_state(r) == "other"]
    if clashes and not force:
        raise UserError(f"{len(clashes)} run folder(s) hold runs made with another command, e.g. "
                        f"{clashes[0]} (see its {RECORD}); use --force to retrain them or choose "
                        "another --output")
    live = [label(r) for r in runs if is_live(read_record(r))]
    if live:
        raise UserError(f"{len(live)} run(s) of this study are still running or queued ({few(live)}):"
                        " wait for them (tools/study.py status SPEC), or stop their jobs first")


def _clear(directory):
    """Remove a run's outputs (not the folder: the user may have put other things there)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and (name.endswith((".pth", ".json", ".txt", ".log")) or
                                     name in ("last_checkpoint", "config.yaml")
                                     or name.startswith("events.out.tfevents")):
            os.remove(path)


def run_study(pretrain, arms, folder, launcher="local", jobs=None, gpus=None, resources=None,
              force=False, wait=True, log=print, poll=0.5):
    """Train what is not finished (an arm after its pre-training), through submitit; submitit's
    folders go under ``folder``. Returns the failures (messages). With ``wait=False`` (SLURM)
    it returns once every run is submitted."""
    resources = resources or Resources()
    _check_startable(pretrain + arms, force)
    todo = []
    for phase, name in ((pretrain, "pre-training"), (arms, "arm")):
        done = 0
        for run in phase:
            state = run_state(run)
            if state == "finished" and not force:
                done += 1
                continue
            if force and state in ("finished", "other"):
                _clear(run["dir"])
            elif state == "partial":
                log(f"{label(run)}: resuming from its last checkpoint")
            todo.append(run)
        if done:
            log(f"{done} of {len(phase)} {name} runs finished earlier (reused)")
    if not todo:
        return []
    os.makedirs(folder, exist_ok=True)
    executor = _executor(launcher, folder, resources)
    if launcher == "local":
        per_run = max(num_gpus(r) for r in todo)
        slots, threads = local_slots(visible_gpus() if gpus is None else gpus, per_run, jobs)
    else:
        slots, threads = None, resources.cpus_per_task or 1
    parent = {label(r): f"pretrain {r['pretrain']} seed {r['seed']}" for r in todo if r.get("pretrain")}
    queue, active, jobs_of, failed, failures, seen = list(todo), {}, {}, set(), [], {}
    while queue or (active and (wait or launcher == "local")):
        for name, (run, job, slot) in list(active.items()):
            if not job.done():
                continue
            del active[name]
            if slot is not None:
                slots.append(slot)
            try:
                seconds = job.result()
                log(f"{name}: done in {seconds:.0f} s")
            except Exception as e:  # a failed job: its error, then the other runs go on
                log(str(e).strip().splitlines()[-1])
                failed.add(name)
                failures.append(f"{name}: failed")
        for run in list(queue):
            name, dep = label(run), parent.get(label(run))
            if dep in failed:
                queue.remove(run)
                failed.add(name)
                failures.append(f"{name}: skipped (its pre-training failed)")
                continue
            waiting = dep is not None and any(label(r) == dep for r in queue) or dep in active
            if waiting and (launcher == "local" or dep not in jobs_of):
                continue
            if launcher == "local" and not slots:
                break
            slot = slots.pop(0) if launcher == "local" else None
            jobs_of[name] = _submit(executor, launcher, run, slot, threads,
                                    jobs_of.get(dep) if waiting else None)
            log(f"{name}: submitted (job {jobs_of[name].job_id})"
                + (f", GPUs {slot}" if slot else ""))
            queue.remove(run)
            active[name] = (run, jobs_of[name], slot)
        for name, (run, _, _) in active.items():
            progress = _progress(run["dir"])
            if progress and seen.get(name) != progress:
                seen[name] = progress
                log(f"  {name}  iter {progress[0]}  loss {progress[1]}")
        if queue or active:
            time.sleep(poll)
    if active:
        log(f"{len(active)} job(s) submitted; tools/study.py status SPEC shows their progress")
    return failures


def _submit(executor, launcher, run, slot, threads, after=None):
    if launcher == "local":
        executor.update_parameters(gpus_per_node=len(slot), visible_gpus=slot)
    else:
        executor.update_parameters(**slurm_parameters(None, run, after))
    write_record(run, "submitted")
    job = executor.submit(TrainJob(run, threads))
    if (read_record(run) or {}).get("status") == "submitted":  # the job may have started already
        write_record(run, "submitted", launcher=launcher, job_id=job.job_id,
                     host=socket.gethostname(), folder=str(job.paths.folder))
    return job
