"""eval_results.json: the metrics of the last evaluation, in strict JSON; and the training
log Detectron2's JSONWriter keeps in metrics.json."""
import json
import math
import os

__all__ = ["write_eval_results", "read_eval_results", "read_metrics_log"]

FILE_NAME = "eval_results.json"


def _strict(value):
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None  # COCOeval gives NaN for an area range without ground truth
    return value


def write_eval_results(results, output_dir):
    """Write ``{dataset: {task: {metric: value}}}`` to ``output_dir/eval_results.json``."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAME)
    with open(path, "w") as f:
        json.dump(_strict(dict(results)), f, indent=2)
    return path


def read_eval_results(output_dir):
    with open(os.path.join(output_dir, FILE_NAME)) as f:
        return json.load(f)


def read_metrics_log(run_dir):
    """The records of ``run_dir/metrics.json`` (one JSON object a line), in order; [] without
    the file. A line cut off by a killed run is skipped."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
