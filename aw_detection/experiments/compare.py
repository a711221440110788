"""Compare training runs (Detectron2 OUTPUT_DIRs) against a baseline run.

A run directory holds ``config.yaml`` (written by default_setup), ``metrics.json`` (training
iteration times), ``eval_results.json`` and ``run_stats.json`` (inference time), all written
by tools/train_net.py.
"""
import csv
import json
import math
import os
import statistics

from tabulate import tabulate

from aw_detection.evaluation.results import read_eval_results, read_metrics_log

__all__ = ["METRICS", "load_run", "compare_runs", "group_by_config", "write_comparison"]

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# Mask AP of instance segmentation runs (COCOEvaluator's "segm" task), as "mask AP", ...
SEGM_METRICS = [f"mask {m}" for m in METRICS]


def _train_seconds_per_iter(run_dir):
    times = [entry["time"] for entry in read_metrics_log(run_dir) if "time" in entry]
    return statistics.median(times) if times else None


def _model_identity(cfg):
    """The config minus what differs between seeds of one experiment."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED, cfg.OUTPUT_DIR = -1, ""
    return cfg.dump()


def load_run(run_dir, dataset=None, with_model_stats=True):
    """One run as a flat dict: name, metrics, params, gflops, train/inference seconds."""
    from aw_detection.evaluation.statistics import model_statistics
    from aw_detection.config import load_config

    results = read_eval_results(run_dir)
    dataset = dataset or next(iter(results))
    if dataset not in results:
        raise ValueError(f"{run_dir}: no results for dataset {dataset!r} (has {list(results)})")
    bbox = results[dataset]["bbox"]
    row = {"run": os.path.basename(os.path.normpath(run_dir)), "dir": run_dir, "dataset": dataset}
    row.update({m: bbox.get(m) for m in METRICS})
    segm = results[dataset].get("segm")
    if segm:
        row.update({f"mask {m}": segm.get(m) for m in METRICS})
    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    row["identity"] = _model_identity(cfg)
    if with_model_stats:
        cfg.MODEL.DEVICE = "cpu"
        stats = model_statistics(cfg)
        row["params"], row["gflops"] = stats["params"], stats["gflops"]
    row["train_s_per_iter"] = _train_seconds_per_iter(run_dir)
    stats_path = os.path.join(run_dir, "run_stats.json")
    row["inference_s_per_img"] = (json.load(open(stats_path)).get("inference_s_per_img")
                                  if os.path.exists(stats_path) else None)
    return row


def _mean_std(values):
    values = [v for v in map(_number, values) if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_by_config(rows):
    """Merge runs of the same config (seeds) into one row with mean and std per metric."""
    groups = {}
    for row in rows:
        groups.setdefault(row["identity"], []).append(row)
    merged = []
    for runs in groups.values():
        row = dict(runs[0], run=runs[0]["run"] if len(runs) == 1 else
                   f'{runs[0]["run"]} (+{len(runs) - 1} seeds)', seeds=len(runs))
        for key in METRICS + SEGM_METRICS + ["train_s_per_iter", "inference_s_per_img"]:
            row[key], row[key + "_std"] = _mean_std([r.get(key) for r in runs])
        merged.append(row)
    return merged


def compare_runs(rows):
    """Add Δ vs the first row for each metric and cost."""
    base = rows[0]
    for row in rows:
        for key in METRICS + SEGM_METRICS + ["params", "gflops", "train_s_per_iter",
                                             "inference_s_per_img"]:
            value, ref = _number(row.get(key)), _number(base.get(key))
            row["d_" + key] = None if value is None or ref is None else value - ref
    return rows


def _number(value):
    """None for missing and NaN (COCOeval's "no objects of this size")."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


# (header, row key, digits, scale, show Δ vs the first row)
COLUMNS = [(m, m, 2, 1, True) for m in METRICS] + [
    ("params (M)", "params", 2, 1e-6, True),
    ("GFLOPs", "gflops", 2, 1, True),
    ("train s/iter", "train_s_per_iter", 3, 1, False),
    ("inference s/img", "inference_s_per_img", 3, 1, False),
]


def _cell(row, key, digits, scale, with_delta):
    value = _number(row.get(key))
    if value is None:
        return "–"
    text = f"{value * scale:.{digits}f}"
    if row.get(key + "_std"):
        text += f" ± {row[key + '_std'] * scale:.{digits}f}"
    if with_delta and row.get("d_" + key) is not None:
        text += f" ({row['d_' + key] * scale:+.{digits}f})"
    return text


def _has_masks(rows):
    return any(_number(r.get("mask AP")) is not None for r in rows)


def _columns(rows):
    """COLUMNS, with mask AP after the box AP columns when some run has it."""
    if not _has_masks(rows):
        return COLUMNS
    return COLUMNS[:len(METRICS)] + [(m, m, 2, 1, True) for m in SEGM_METRICS] + COLUMNS[len(METRICS):]


def markdown_table(rows):
    columns = _columns(rows)
    table = [[row["run"]] + [_cell(row, key, digits, scale, delta and i > 0)
                             for _, key, digits, scale, delta in columns]
             for i, row in enumerate(rows)]
    return tabulate(table, ["run"] + [c[0] for c in columns], tablefmt="github",
                    disable_numparse=True)


def write_comparison(rows, output_dir, title="Comparison"):
    """comparison.md / .csv / .png under output_dir; returns the Markdown text."""
    os.makedirs(output_dir, exist_ok=True)
    base = rows[0]
    kind = "box and mask AP" if _has_masks(rows) else "box AP"
    text = (f"# {title}\n\nCOCO-style {kind} on `{base['dataset']}`; Δ in parentheses is "
            f"against `{base['run']}` (first row).\n\n{markdown_table(rows)}\n")
    with open(os.path.join(output_dir, "comparison.md"), "w") as f:
        f.write(text)
    metrics = METRICS + (SEGM_METRICS if _has_masks(rows) else [])
    keys = ["run", "dir", "dataset", "seeds"] + metrics + [m + "_std" for m in metrics] + \
        ["d_" + m for m in metrics] + ["params", "gflops", "train_s_per_iter",
                                       "inference_s_per_img"]
    with open(os.path.join(output_dir, "comparison.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, os.path.join(output_dir, "comparison.png"))
    return text


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = [("gflops", "GFLOPs (fvcore)"), ("train_s_per_iter", "train s/iter"),
             ("inference_s_per_img", "inference s/img")]
    costs = [c for c in costs if any(r.get(c[0]) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], costs):
        for i, row in enumerate(rows):
            if row.get(key) is None or row.get("AP") is None:
                continue
            ax.errorbar(row[key], row["AP"], yerr=row.get("AP_std") or 0, fmt="o",
                        color="black" if i == 0 else f"C{i}", capsize=3)
            ax.annotate(row["run"], (row[key], row["AP"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.margins(x=0.3, y=0.15)  # room for the labels
        ax.set_xlabel(label)
        ax.set_ylabel("box AP")
        ax.grid(alpha=0.3)
    fig.suptitle(f"AP vs cost on {rows[0]['dataset']} (black: baseline {rows[0]['run']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
