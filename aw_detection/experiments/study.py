"""Studies: arms (a config + overrides) x seeds, trained in parallel and resumably, summarised
with per-arm mean +- std and per-seed *paired* differences to the baseline arm with 95%
t-intervals (``study.json``, ``study.md``, ``study.png``). Driven by tools/study.py.

A study spec (YAML, paths relative to the repository root; ``{seed}`` in any option or argument
is replaced by the run's seed)::

    name: from_scratch                   # default: the file name
    title: "..."                         # study.md heading
    description: "..."                   # one paragraph under it
    seeds: [1, 2, 3, 4, 5]
    baseline: baseline                   # the arm the deltas pair with (default: the first)
    opts: [SOLVER.MAX_ITER, 800]         # KEY VALUE for every run (pre-training too)
    detection_args: []                   # extra tools/train_net.py arguments (e.g. --dataset)
    classification_args: []              # extra tools/train_classification.py arguments
    pretrain_output: ../shapes_pretrain  # relative to the study's output; default: pretrain
    pretrain:                            # classification runs, one per (name, seed)
      base_cls: {config: configs/classification/shapes_R_18.yaml, opts: []}
    arms:
      - name: baseline
        config: configs/demo/shapes_R_18_FPN.yaml
        opts: []
        pretrain: base_cls               # MODEL.WEIGHTS = that seed's pre-trained model_final.pth
        task: detection                  # or classification (tools/train_classification.py)

Runs go to ``<output>/<arm>/seed<k>`` (Detectron2 OUTPUT_DIRs). Each records its command in
``study_run.json``; a finished run with the same command is reused, a killed one resumes from
its last checkpoint, and one made with another command is refused (``--force`` retrains).
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import yaml
from scipy import stats

from aw_detection.errors import UserError
from aw_detection.evaluation.results import read_metrics_log
from aw_detection.experiments.compare import METRICS as BOX_METRICS

__all__ = ["load_spec", "plan_runs", "run_study", "collect_results", "included_seeds", "summarize",
           "paired_interval", "welch_interval", "t_interval", "write_report"]

# Spec paths (configs) are relative to the project checkout the package lives in.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The runs' entry points, by module: they work from a checkout and from an installed package.
MODULES = {"detection": "aw_detection.engine.train_net",
           "classification": "aw_detection.engine.train_classification"}
METRICS = {"detection": BOX_METRICS,
           "classification": ["top1", "top5"]}
SPEC_KEYS = {"name", "title", "description", "seeds", "baseline", "opts", "detection_args",
             "classification_args", "pretrain_output", "pretrain", "arms"}
ARM_KEYS = {"name", "config", "opts", "pretrain", "task"}
PRETRAIN_KEYS = {"config", "opts"}
RECORD = "study_run.json"
PROGRESS = re.compile(r"iter: (\d+)\s+total_loss: (\S+)")
LAST_LOSSES = 5  # train_loss_final: mean of the last 5 logged total_loss values


# --------------------------------------------------------------------------- spec


def _strings(value, where):
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{where} must be a list, got {value!r}")
    return [str(v) for v in value]


def _config_path(path, where):
    if not isinstance(path, str) or not path:
        raise UserError(f"{where}: 'config' must name a config file")
    full = path if os.path.isabs(path) else os.path.join(ROOT, path)
    if not os.path.isfile(full):
        raise UserError(f"{where}: config {path} does not exist (paths are relative to {ROOT})")
    return full


def _name(value, where):
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise UserError(f"{where}: name {value!r} must be letters, digits, '_', '.' or '-'")
    return value


def _unknown(entry, allowed, where):
    extra = sorted(set(entry) - allowed)
    if extra:
        raise UserError(f"{where}: unknown key(s) {extra}; known: {sorted(allowed)}")


def load_spec(path):
    """The spec as a dict with every default filled in; UserError naming the field otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"study spec {path} does not exist")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})")
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a study spec is a mapping with 'seeds' and 'arms'")
    _unknown(spec, SPEC_KEYS, path)
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{path}: 'seeds' must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: 'seeds' has duplicates")
    pretrain = {}
    if not isinstance(spec.get("pretrain") or {}, dict):
        raise UserError(f"{path}: 'pretrain' must map names to {{config, opts}}")
    for name, entry in (spec.get("pretrain") or {}).items():
        where = f"{path}: pretrain {name}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping with 'config' (and 'opts')")
        _unknown(entry, PRETRAIN_KEYS, where)
        pretrain[_name(name, where)] = {"config": _config_path(entry.get("config"), where),
                                        "opts": _strings(entry.get("opts"), f"{where} opts")}
    arms = spec.get("arms")
    if not isinstance(arms, list) or not arms:
        raise UserError(f"{path}: 'arms' must be a non-empty list")
    checked = []
    for i, arm in enumerate(arms):
        where = f"{path}: arms[{i}]"
        if not isinstance(arm, dict):
            raise UserError(f"{where} must be a mapping with 'name' and 'config'")
        _unknown(arm, ARM_KEYS, where)
        task = arm.get("task", "detection")
        if task not in MODULES:
            raise UserError(f"{where}: task must be one of {list(MODULES)}, got {task!r}")
        if arm.get("pretrain") is not None and arm["pretrain"] not in pretrain:
            raise UserError(f"{where}: pretrain {arm['pretrain']!r} is not under 'pretrain' "
                            f"(has {sorted(pretrain)})")
        checked.append({"name": _name(arm.get("name"), where), "task": task,
                        "config": _config_path(arm.get("config"), where),
                        "opts": _strings(arm.get("opts"), f"{where} opts"),
                        "pretrain": arm.get("pretrain")})
    names = [a["name"] for a in checked]
    if len(set(names)) != len(names) or "pretrain" in names:
        raise UserError(f"{path}: arm names must be unique and not 'pretrain', got {names}")
    baseline = spec.get("baseline", names[0])
    if baseline not in names:
        raise UserError(f"{path}: baseline {baseline!r} is not an arm ({names})")
    if len({a["task"] for a in checked}) > 1:
        raise UserError(f"{path}: all arms must have the same task (their metrics are compared)")
    return {
        "path": os.path.abspath(path),
        "name": spec.get("name") or os.path.splitext(os.path.basename(path))[0],
        "title": spec.get("title") or spec.get("name") or os.path.basename(path),
        "description": (spec.get("description") or "").strip(),
        "seeds": seeds, "baseline": baseline, "opts": _strings(spec.get("opts"), f"{path}: opts"),
        "detection_args": _strings(spec.get("detection_args"), f"{path}: detection_args"),
        "classification_args": _strings(spec.get("classification_args"),
                                        f"{path}: classification_args"),
        "pretrain_output": spec.get("pretrain_output"), "pretrain": pretrain, "arms": checked,
    }


# --------------------------------------------------------------------------- runs


def _relative(path):
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _command(task, config, args, opts, seed, output_dir, weights=None):
    """The tool's argument list (without the interpreter): what identifies a run."""
    subst = [a.replace("{seed}", str(seed)) for a in args]
    opts = [o.replace("{seed}", str(seed)) for o in opts]
    weights = ["MODEL.WEIGHTS", weights] if weights else []
    return ["-m", MODULES[task], "--config-file", _relative(config), *subst,
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


def _record(run):
    path = os.path.join(run["dir"], RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_record(run, status, seconds=None):
    os.makedirs(run["dir"], exist_ok=True)
    with open(os.path.join(run["dir"], RECORD), "w") as f:
        json.dump({"args": run["args"], "status": status, "seconds": seconds}, f, indent=1)


def _arguments(command):
    """A run's arguments without how it was launched (``-m module``; records written before
    runs were launched by module begin with a tools/ script)."""
    return command[command.index("--config-file"):]


def run_state(run):
    """"finished", "partial" (resumable), "new", or "other" (made with another command)."""
    record = _record(run)
    if record is None:
        return "new"
    if _arguments(record["args"]) != _arguments(run["args"]):
        return "other"
    if record["status"] == "finished":
        return "finished"
    return "partial" if os.path.exists(os.path.join(run["dir"], "last_checkpoint")) else "new"


def _label(run):
    return f"{'pretrain ' if run['kind'] == 'pretrain' else ''}{run['name']} seed {run['seed']}"


def _train(run, threads, log):
    """One run as a subprocess (resumed when it had started); raises RuntimeError on failure."""
    state = run_state(run)
    args = list(run["args"])
    if state == "partial":  # a flag: before the trailing KEY VALUE overrides
        args.insert(args.index("--config-file"), "--resume")
    if state == "partial":
        log(f"{_label(run)}: resuming from its last checkpoint")
    _write_record(run, "started")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads))
    start = time.time()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = PROGRESS.search(line)
        if match:
            log(f"  {_label(run)}  iter {int(match.group(1)) + 1}  loss {match.group(2)}")
    if proc.wait() != 0:
        raise RuntimeError(f"{_label(run)} failed ({' '.join(args)}); last lines:\n{''.join(tail)}")
    _write_record(run, "finished", round(time.time() - start, 1))
    log(f"{_label(run)}: done in {time.time() - start:.0f} s")


def _check_reusable(runs, force):
    clashes = [r["dir"] for r in runs if run_state(r) == "other"]
    if clashes and not force:
        raise UserError(f"{len(clashes)} run folder(s) hold runs made with another command, e.g. "
                        f"{clashes[0]} (see its {RECORD}); use --force to retrain them or choose "
                        "another --output")


def run_study(pretrain, arms, jobs=2, force=False, log=print):
    """Train what is not finished: pre-training first, then the arms, ``jobs`` at a time with
    cores // jobs threads each. Returns the failures (messages)."""
    _check_reusable(pretrain + arms, force)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures = []
    for phase in (pretrain, arms):
        todo = []
        for run in phase:
            state = run_state(run)
            if state == "finished" and not force:
                continue
            if force and state in ("finished", "other"):
                _clear(run["dir"])
            if run.get("pretrain") and any(f.startswith(f"pretrain {run['pretrain']} seed {run['seed']}:")
                                           for f in failures):
                failures.append(f"{_label(run)}: skipped (its pre-training failed)")
                continue
            todo.append(run)
        done = len(phase) - len(todo)
        if done:
            log(f"{done} of {len(phase)} {'pre-training' if phase is pretrain else 'arm'} runs "
                "finished earlier (reused)")
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            futures = [(run, pool.submit(_train, run, threads, log)) for run in todo]
            for run, future in futures:
                try:
                    future.result()
                except RuntimeError as e:
                    log(str(e))
                    failures.append(f"{_label(run)}: failed")
    return failures


def _clear(directory):
    """Remove a run's outputs (not the folder: the user may have put other things there)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and (name.endswith((".pth", ".json", ".txt")) or
                                     name in ("last_checkpoint", "config.yaml")
                                     or name.startswith("events.out.tfevents")):
            os.remove(path)


# --------------------------------------------------------------------------- results


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
            missing.append(_label(run))
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


# --------------------------------------------------------------------------- statistics


def t_interval(values, confidence=0.95):
    """(mean, low, high) of the t-interval for the mean; low/high None for fewer than 2 values."""
    values = list(values)
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None, None
    if len(set(values)) == 1:  # no spread: scipy's interval would be nan
        return mean, mean, mean
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return mean, float(ci.low), float(ci.high)


def paired_interval(base, other, confidence=0.95):
    """Paired difference other - base over the seeds both have ({seed: value} each):
    {"mean", "low", "high", "n", "sd", "p", "per_seed", "above"}. The t-interval of the
    per-seed differences (scipy's paired t-test): seed-to-seed variation common to both arms
    cancels."""
    seeds = sorted(set(base) & set(other))
    diffs = {s: other[s] - base[s] for s in seeds}
    if not seeds:
        return None
    mean, low, high = t_interval(diffs.values(), confidence)
    sd = statistics.stdev(diffs.values()) if len(seeds) > 1 else None
    p = None
    if sd is not None:
        p = (1.0 if mean == 0 else 0.0) if sd == 0 else float(
            stats.ttest_rel([other[s] for s in seeds], [base[s] for s in seeds]).pvalue)
    return {"mean": mean, "low": low, "high": high, "n": len(seeds), "sd": sd, "p": p,
            "per_seed": diffs, "above": sum(d > 0 for d in diffs.values())}


def welch_interval(base, other, confidence=0.95):
    """Unpaired difference of means (Welch's t-interval), for comparison with the paired one."""
    a, b = list(base), list(other)
    if len(a) < 2 or len(b) < 2:
        return None
    mean = statistics.mean(b) - statistics.mean(a)
    if statistics.variance(a) + statistics.variance(b) == 0:
        return {"mean": mean, "low": mean, "high": mean}
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(confidence)
    return {"mean": mean, "low": float(ci.low), "high": float(ci.high)}


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def summarize(spec, rows):
    """Per arm: mean/std of every metric and of the train losses; paired and unpaired deltas
    to the baseline arm for every metric."""
    task = spec["arms"][0]["task"]
    extras = sorted({k for r in rows for k in r if k.startswith(("AP ", "abs_A "))})
    metrics = METRICS[task] + extras + ["train_loss_final", "pretrain_top1"]
    by_arm = {arm["name"]: {r["seed"]: r for r in rows if r["arm"] == arm["name"]}
              for arm in spec["arms"]}
    base = by_arm[spec["baseline"]]
    arms = []
    for arm in spec["arms"]:
        runs = by_arm[arm["name"]]
        entry = {"arm": arm["name"], "config": _relative(arm["config"]), "opts": arm["opts"],
                 "pretrain": arm["pretrain"], "seeds": sorted(runs), "stats": {}, "paired": {},
                 "unpaired": {}}
        for metric in metrics:
            values = {s: r.get(metric) for s, r in runs.items() if r.get(metric) is not None}
            entry["stats"][metric] = _mean_std(values.values())
            if arm["name"] == spec["baseline"] or metric == "pretrain_top1" and not arm["pretrain"]:
                continue
            ref = {s: r.get(metric) for s, r in base.items() if r.get(metric) is not None}
            entry["paired"][metric] = paired_interval(ref, values)
            entry["unpaired"][metric] = welch_interval(ref.values(), values.values())
        arms.append(entry)
    return {"task": task, "metric": METRICS[task][0], "baseline": spec["baseline"], "arms": arms,
            "extras": extras}


# --------------------------------------------------------------------------- report


def _fmt(stat, digits=2):
    if not stat:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def _fmt_delta(delta, digits=2):
    if not delta:
        return "–"
    text = f"{delta['mean']:+.{digits}f}"
    if delta.get("low") is not None:
        text += f" [{delta['low']:+.{digits}f}, {delta['high']:+.{digits}f}]"
    return text


def markdown(spec, summary, rows, missing, command):
    task, metric = summary["task"], summary["metric"]
    secondary = METRICS[task][1:3] + [m for m in summary["extras"] if m.startswith("AP ")]
    has_pretrain = any(a["pretrain"] for a in summary["arms"])
    header = ["arm", "runs", f"{metric} (mean ± std)", f"Δ {metric} paired [95% CI]",
              "seeds above baseline"]
    header += [f"{m} (Δ paired [95% CI])" for m in secondary] + ["final train loss"]
    header += ["pre-training top-1"] if has_pretrain else []
    lines = [f"# {spec['title']}", ""]
    if spec["description"]:
        lines += [spec["description"], ""]
    lines += [f"Reproduce: `{command}`", "",
              f"{len(spec['seeds'])} seeds ({', '.join(map(str, spec['seeds']))}); Δ is each arm "
              f"minus `{summary['baseline']}` **on the same seed**, averaged, with a 95% t-interval "
              "over the seeds; \"seeds above\" counts seeds where the arm beat the baseline. "
              "Final train loss: mean of the last 5 logged `total_loss` values (metrics.json).",
              "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in summary["arms"]:
        stats, paired = arm["stats"], arm["paired"]
        is_base = arm["arm"] == summary["baseline"]
        main = paired.get(metric)
        cells = [f"`{arm['arm']}`" + (" (baseline)" if is_base else ""),
                 str(len(arm["seeds"])), _fmt(stats[metric]),
                 "–" if is_base else _fmt_delta(main),
                 "–" if is_base or not main else f"{main['above']}/{main['n']}"]
        for m in secondary:
            cells.append(_fmt(stats[m]) + ("" if is_base else f" ({_fmt_delta(paired.get(m))})"))
        cells.append(_fmt(stats["train_loss_final"], 3))
        if has_pretrain:
            cells.append(_fmt(stats["pretrain_top1"]))
        lines.append("| " + " | ".join(cells) + " |")
    attention = [m for m in summary["extras"] if m.startswith("abs_A ")]
    if attention:
        lines += ["", "Mean |A| of the AW layers per stage at the end of training (mean ± std over "
                  "seeds; AttentionStats in metrics.json):", "",
                  "| arm | " + " | ".join(m.replace("abs_A", "mean \\|A\\|") for m in attention) + " |",
                  "|" + "---|" * (len(attention) + 1)]
        lines += [f"| `{a['arm']}` | " + " | ".join(_fmt(a["stats"][m], 3) for m in attention) + " |"
                  for a in summary["arms"] if a["stats"][attention[0]]]
    lines += _attention_over_iterations(summary, rows)
    seeds = sorted({r["seed"] for r in rows})
    lines += ["", f"Per seed ({metric}):", "", "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|" + "---|" * (len(seeds) + 1)]
    for arm in summary["arms"]:
        values = {r["seed"]: r.get(metric) for r in rows if r["arm"] == arm["arm"]}
        lines.append(f"| `{arm['arm']}` | " + " | ".join(
            "–" if values.get(s) is None else f"{values[s]:.2f}" for s in seeds) + " |")
    lines += ["", "Arms: " + "; ".join(
        f"`{a['arm']}` = `{a['config']}`" + (f" {' '.join(a['opts'])}" if a["opts"] else "")
        + (f" from pre-training `{a['pretrain']}`" if a["pretrain"] else "") for a in summary["arms"]) + ".",
        "", "No cost columns: the runs shared the CPU with each other, so their timings are not "
        "comparable. Measure cost with `tools/benchmark.py` (models interleaved in one process)."]
    for source in sorted({r["source"] for r in rows if r.get("source")}):
        included = [r for r in rows if r.get("source") == source]
        lines += ["", f"{len(included)} runs (seeds "
                  f"{', '.join(map(str, sorted({r['seed'] for r in included})))}) come from the "
                  f"earlier report `{source}`, made with `{included[0]['source_command']}`."]
    if missing:
        lines += ["", f"**Missing runs ({len(missing)}):** " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


def _attention_over_iterations(summary, rows, points=4):
    """Markdown lines: mean |A| per AW arm and stage at ``points`` iterations spread over the
    run (mean over the seeds that logged it)."""
    histories = [r for r in rows if r.get("abs_A_history")]
    if not histories:
        return []
    logged = sorted({it for r in histories for h in r["abs_A_history"].values() for it, _ in h})
    picks = sorted({logged[round((len(logged) - 1) * (i + 1) / points)] for i in range(points)})
    lines = ["", "Mean |A| over training (iterations as logged; mean over the seeds that "
             "logged them):", "",
             "| arm | stage | " + " | ".join(f"iteration {i + 1}" for i in picks) + " |",
             "|" + "---|" * (len(picks) + 2)]
    for arm in summary["arms"]:
        runs = [r for r in histories if r["arm"] == arm["arm"]]
        for stage in sorted({s for r in runs for s in r["abs_A_history"]}):
            cells = []
            for it in picks:
                values = [v for r in runs for i, v in r["abs_A_history"].get(stage, []) if i == it]
                cells.append(f"{statistics.mean(values):.3f}" if values else "–")
            lines.append(f"| `{arm['arm']}` | {stage} | " + " | ".join(cells) + " |")
    return lines


def _plot(summary, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, names = summary["metric"], [a["arm"] for a in summary["arms"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(names) + 4), 4.2))
    seeds = sorted({r["seed"] for r in rows})
    for seed in seeds:  # one grey line per seed: the pairing the deltas use
        ys = [next((r[metric] for r in rows if r["arm"] == n and r["seed"] == seed), None)
              for n in names]
        xs = [i for i, y in enumerate(ys) if y is not None]
        left.plot(xs, [ys[i] for i in xs], "-o", color="0.7", lw=0.8, ms=3, zorder=1)
    for i, arm in enumerate(summary["arms"]):
        values = [r[metric] for r in rows if r["arm"] == arm["arm"] and r.get(metric) is not None]
        if not values:
            continue
        mean, low, high = t_interval(values)
        err = [[mean - low], [high - mean]] if low is not None else None
        left.errorbar(i + 0.15, mean, yerr=err, fmt="s", color="black" if i == 0 else f"C{i}",
                      capsize=4, zorder=2)
        delta = arm["paired"].get(metric)
        if delta:
            right.scatter([i] * len(delta["per_seed"]), list(delta["per_seed"].values()),
                          color="0.6", s=12, zorder=1)
            err = ([[delta["mean"] - delta["low"]], [delta["high"] - delta["mean"]]]
                   if delta["low"] is not None else None)
            right.errorbar(i + 0.15, delta["mean"], yerr=err, fmt="s", color=f"C{i}", capsize=4)
    left.set_title(f"{metric} per seed (grey) and mean with 95% CI")
    right.axhline(0, color="black", lw=0.8)
    right.set_title(f"paired Δ {metric} vs {summary['baseline']} (95% CI)")
    for ax in (left, right):
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(spec, output, rows, missing, command):
    """study.json, study.md and study.png under ``output``; returns the Markdown."""
    os.makedirs(output, exist_ok=True)
    summary = summarize(spec, rows)
    text = markdown(spec, summary, rows, missing, command)
    with open(os.path.join(output, "study.md"), "w") as f:
        f.write(text)
    with open(os.path.join(output, "study.json"), "w") as f:
        json.dump({"spec": spec, "command": command, "summary": summary, "runs": rows,
                   "missing": missing}, f, indent=1)
    if rows:
        _plot(summary, rows, os.path.join(output, "study.png"))
    return text
