"""A study's summary and report: per-arm mean +- std, paired differences to the baseline with
95% t-intervals (scipy's t-tests), study.md (tables by tabulate), study.json and study.png."""
import json
import os
import statistics

from scipy import stats
from tabulate import tabulate

from aw_detection.experiments.study.results import METRICS
from aw_detection.experiments.study.runs import relative

__all__ = ["t_interval", "paired_interval", "welch_interval", "summarize", "markdown", "write_report"]



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
        entry = {"arm": arm["name"], "config": relative(arm["config"]), "opts": arm["opts"],
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


def _table(header, rows):
    """A GitHub-Markdown table; numbers stay as formatted."""
    return ["", tabulate(rows, header, tablefmt="github", disable_numparse=True)]


def markdown(spec, summary, rows, missing, command):
    task, metric = summary["task"], summary["metric"]
    secondary = METRICS[task][1:3] + [m for m in summary["extras"] if m.startswith("AP ")]
    has_pretrain = any(a["pretrain"] for a in summary["arms"])
    header = ["arm", "runs", f"{metric} (mean ± std)", f"Δ {metric} paired [95% CI]",
              "seeds above baseline"]
    header += [f"{m} (Δ paired [95% CI])" for m in secondary] + ["final train loss"]
    header += ["pre-training top-1"] if has_pretrain else []
    table = []
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
        table.append(cells)
    lines = [f"# {spec['title']}", ""]
    if spec["description"]:
        lines += [spec["description"], ""]
    lines += [f"Reproduce: `{command}`", "",
              f"{len(spec['seeds'])} seeds ({', '.join(map(str, spec['seeds']))}); Δ is each arm "
              f"minus `{summary['baseline']}` **on the same seed**, averaged, with a 95% t-interval "
              "over the seeds; \"seeds above\" counts seeds where the arm beat the baseline. "
              "Final train loss: mean of the last 5 logged `total_loss` values (metrics.json)."]
    lines += _table(header, table)
    attention = [m for m in summary["extras"] if m.startswith("abs_A ")]
    if attention:
        lines += ["", "Mean |A| of the AW layers per stage at the end of training (mean ± std over "
                  "seeds; AttentionStats in metrics.json):"]
        lines += _table(["arm"] + [m.replace("abs_A", "mean \\|A\\|") for m in attention],
                        [[f"`{a['arm']}`"] + [_fmt(a["stats"][m], 3) for m in attention]
                         for a in summary["arms"] if a["stats"][attention[0]]])
    lines += _attention_over_iterations(summary, rows)
    seeds = sorted({r["seed"] for r in rows})
    per_seed = []
    for arm in summary["arms"]:
        values = {r["seed"]: r.get(metric) for r in rows if r["arm"] == arm["arm"]}
        per_seed.append([f"`{arm['arm']}`"] + ["–" if values.get(s) is None else f"{values[s]:.2f}"
                                                for s in seeds])
    lines += ["", f"Per seed ({metric}):"] + _table(["arm"] + [f"seed {s}" for s in seeds], per_seed)
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
    table = []
    for arm in summary["arms"]:
        runs = [r for r in histories if r["arm"] == arm["arm"]]
        for stage in sorted({s for r in runs for s in r["abs_A_history"]}):
            cells = [f"`{arm['arm']}`", stage]
            for it in picks:
                values = [v for r in runs for i, v in r["abs_A_history"].get(stage, []) if i == it]
                cells.append(f"{statistics.mean(values):.3f}" if values else "–")
            table.append(cells)
    return ["", "Mean |A| over training (iterations as logged; mean over the seeds that "
            "logged them):"] + _table(["arm", "stage"] + [f"iteration {i + 1}" for i in picks], table)


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
