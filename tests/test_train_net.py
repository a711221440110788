"""End to end through tools/train_net.py: train, evaluate, reload, distributed."""
import json
import math
import os

from aw_detection.evaluation import read_eval_results

from .conftest import DEMO_CONFIG, TINY_OPTS, run_tool


def _ap(output_dir):
    return read_eval_results(output_dir)["tiny_val"]["bbox"]["AP"]


def test_train_eval_and_reload(tiny_shapes, tmp_path):
    out = str(tmp_path / "run")
    run_tool("train_net.py", "--config-file", DEMO_CONFIG, *tiny_shapes["args"], *TINY_OPTS,
             "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    ap = _ap(out)
    assert math.isfinite(ap) and 0 <= ap <= 100
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert any("total_loss" in m for m in metrics)
    assert os.path.exists(os.path.join(out, "model_final.pth"))

    again = str(tmp_path / "eval")
    run_tool("train_net.py", "--eval-only", "--config-file", DEMO_CONFIG, *tiny_shapes["args"],
             *TINY_OPTS, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
             "OUTPUT_DIR", again)
    assert _ap(again) == ap


def test_two_process_cpu_ddp(tiny_shapes, tmp_path):
    out = str(tmp_path / "ddp")
    run_tool("train_net.py", "--num-gpus", "2", "--config-file", DEMO_CONFIG,
                    *tiny_shapes["args"], *TINY_OPTS, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out)
    assert "World size: 2" in open(os.path.join(out, "log.txt")).read()
    assert math.isfinite(_ap(out))
