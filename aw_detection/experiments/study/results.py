"""A study's results: each finished run's metrics, final train loss and attention statistics,
and whole seeds taken from earlier reports of the same study."""
import json
import os
import statistics

from aw_detection.errors import UserError
from aw_detection.evaluation.results import read_metrics_log
from aw_detection.experiments.compare import METRICS as BOX_METRICS
from aw_detection.experiments.study.runs import label, run_state

__all__ = ["METRICS", "read_metrics", "collect_results", "included_seeds"]

METRICS = {"detection": BOX_METRICS, "classification": ["top1", "top5"]}
LAST_LOSSES = 5  # train_loss_final: mean of the last 5 logged total_loss values



def _train_loss(run_dir):
    """Mean of the last LAST_LOSSES logged total_loss values (each already Detectron2's median
    over 20 iterations), or None."""
    losses = [entry["total_loss"] for entry in read_metrics_log(run_dir) if "total_loss" in entry]
    return statistics.mean(losses[-LAST_LOSSES:]) if losses else None


def read_metrics(run_dir, task):
    """The run's final metrics ({name: value}) from eval_results.json: those of the first test
    set, and "AP <name>" of every further one (e.g. the training images, to see the fit)."""
    with open(os.path.join(run_dir, "eval_results.json")) as f:
        results = json.load(f)
    if task == "classification":
        return {m: results.get(m) for m in METRICS[task]}
    (_, first), *others = results.items()
    metrics = {m: first["bbox"].get(m) for m in METRICS[task]}
    metrics.update({f"AP {name}": r["bbox"].get("AP") for name, r in others})
    return metrics


def _attention(run_dir):
    """{"abs_A <stage>": last value, "abs_A_history": {stage: [[iteration, value], ...]}}: the
    AttentionStats records in metrics.json (AW runs; {} for others)."""
    by_stage = {}  # stage -> {iteration: value}; a resumed run logs some iterations twice
    for entry in read_metrics_log(run_dir):
        for key, value in entry.items():
            if key.startswith("aw/") and key.endswith("/abs_A"):
                by_stage.setdefault(key.split("/")[1], {})[entry.get("iteration")] = value
    if not by_stage:
        return {}
    history = {stage: [[it, v] for it, v in sorted(points.items())]
               for stage, points in by_stage.items()}
    return {**{f"abs_A {stage}": points[-1][1] for stage, points in history.items()},
            "abs_A_history": history}


def _comparable(spec):
    """What defines a study's runs (not its seeds, texts or output folder), with config paths
    from ``configs/`` on, so that reports written on other machines compare."""
    def relative(path):
        i = path.rfind("/configs/")
        return path[i + 1:] if i >= 0 else path

    return {"baseline": spec["baseline"], "opts": spec["opts"],
            "detection_args": spec["detection_args"],
            "classification_args": spec["classification_args"],
            "pretrain": {name: dict(entry, config=relative(entry["config"]))
                         for name, entry in spec["pretrain"].items()},
            "arms": [dict(a, config=relative(a["config"])) for a in spec["arms"]]}


def included_seeds(paths, spec, arm_runs):
    """{seed: rows} taken from earlier reports of this study (``study.json`` files, e.g. seeds
    trained on another machine): whole seeds, every arm of one seed from one report, for the
    seeds of ``spec`` that are not finished here (``arm_runs``, from :func:`plan_runs`). Each
    row gets ``source`` (the report) and ``source_command``."""
    finished = {s for s in spec["seeds"]
                if all(run_state(r) == "finished" for r in arm_runs if r["seed"] == s)}
    arms = [a["name"] for a in spec["arms"]]
    taken = {}
    for path in paths:
        try:
            with open(path) as f:
                report = json.load(f)
            runs, theirs = report["runs"], _comparable(report["spec"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--include {path}: not a study.json written by tools/study.py ({e})")
        ours = _comparable(spec)
        differ = [k for k in ours if ours[k] != theirs[k]]
        if differ:
            raise UserError(f"--include {path}: a report of another study (its {differ[0]} "
                            f"differ: {theirs[differ[0]]} vs {ours[differ[0]]})")
        by_seed = {}
        for run in runs:
            by_seed.setdefault(run["seed"], {})[run["arm"]] = dict(
                run, source=path, source_command=report.get("command"))
        for seed, found in sorted(by_seed.items()):
            if seed in spec["seeds"] and seed not in finished and seed not in taken \
                    and set(arms) <= set(found):
                taken[seed] = [found[a] for a in arms]
    return taken


def collect_results(pretrain, arms):
    """Per finished run: arm, seed, dir, metrics, train_loss_final (and its pre-training's
    top1 / train loss). Unfinished runs are listed as missing."""
    pre = {(r["name"], r["seed"]): r for r in pretrain}
    rows, missing = [], []
    for run in arms:
        if run_state(run) != "finished":
            missing.append(label(run))
            continue
        row = {"arm": run["name"], "seed": run["seed"], "dir": run["dir"], "task": run["task"],
               **read_metrics(run["dir"], run["task"]), "train_loss_final": _train_loss(run["dir"]),
               **_attention(run["dir"])}
        if run["pretrain"]:
            source = pre[(run["pretrain"], run["seed"])]
            row["pretrain_dir"] = source["dir"]
            row["pretrain_top1"] = read_metrics(source["dir"], "classification")["top1"]
            row["pretrain_train_loss_final"] = _train_loss(source["dir"])
        rows.append(row)
    return rows, missing
