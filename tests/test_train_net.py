"""End to end through tools/train_net.py: train, evaluate, reload, distributed, AMP."""
import itertools
import json
import math
import os
import subprocess
import sys

from types import SimpleNamespace

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from aw_detection.experiments.benchmark import synthetic_batch
from aw_detection.config import load_config, load_run_config
from aw_detection.engine.trainer import CPUAutocastTrainer
from aw_detection.engine.hooks import AttentionStats
from aw_detection.evaluation import read_eval_results
from aw_detection.engine.inference import build_inference_model
from aw_detection.layers import AWConv2d

from .conftest import ROOT, TINY_OPTS, run_tool

AW_CONFIG = os.path.join(ROOT, "configs", "demo", "shapes_R_18_FPN_aw.yaml")


def _predictions(output_dir, dataset):
    path = os.path.join(output_dir, "inference", dataset, "coco_instances_results.json")
    return sorted(json.load(open(path)), key=lambda d: (d["image_id"], -d["score"]))


def test_train_evaluate_reload_gives_the_same_weights_and_predictions(tiny_shapes, tmp_path):
    out = str(tmp_path / "run")
    run_tool("train_net.py", "--config-file", AW_CONFIG, *tiny_shapes["args"], *TINY_OPTS,
             "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert any(math.isfinite(m.get("total_loss", math.nan)) for m in metrics)

    # Every tensor of model_final.pth lands in the model built from the run's config.yaml.
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    model = build_inference_model(load_run_config(out))
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert any(".generator.expand." in k and saved[k].abs().sum() > 0 for k in saved)  # trained
    logged = [m for m in metrics if "aw/res3/abs_A" in m][-1]  # the last iteration is logged
    assert logged["iteration"] == 2 and logged["aw/res5/abs_A"] > 0 and logged["aw/res5/abs_input"] > 0

    # Evaluation from the reloaded weights predicts exactly what the trained model predicted,
    # on several test sets at once.
    again = str(tmp_path / "eval")
    val_json, val_dir = tiny_shapes["splits"]["val"]
    run_tool("train_net.py", "--eval-only", "--config-file", os.path.join(out, "config.yaml"),
             *tiny_shapes["args"], "--dataset", f"tiny_val2={val_json}:{val_dir}",
             "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
             "DATASETS.TEST", "('tiny_val', 'tiny_val2')", "OUTPUT_DIR", again)
    trained = _predictions(out, "tiny_val")
    assert trained and _predictions(again, "tiny_val") == trained
    assert _predictions(again, "tiny_val2") == trained
    results = read_eval_results(again)
    assert set(results) == {"tiny_val", "tiny_val2"}
    assert results["tiny_val"] == results["tiny_val2"] == read_eval_results(out)["tiny_val"]


DDP_WORKER = """
import sys, torch
from detectron2.engine import launch
from detectron2.utils import comm

def worker(argv, out):
    import aw_detection
    from aw_detection.engine import Trainer, setup
    sys.path.insert(0, {tools!r})
    from train_net import parser
    args = parser().parse_args(argv)
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = comm.all_gather((wrapped, flat))
    if comm.is_main_process():
        torch.save(gathered, out)

if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[2:], sys.argv[1]))
"""


def test_two_process_cpu_ddp_keeps_ranks_in_sync(tiny_shapes, tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(DDP_WORKER.format(tools=os.path.join(ROOT, "tools")))
    result = str(tmp_path / "ranks.pth")
    out = str(tmp_path / "ddp")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), result, "--config-file", AW_CONFIG,
                    *tiny_shapes["args"], *TINY_OPTS, "SOLVER.MAX_ITER", "3",
                    "DATASETS.TEST", "()", "OUTPUT_DIR", out],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    (wrapped0, params0), (wrapped1, params1) = torch.load(result, weights_only=False)
    assert wrapped0 and wrapped1
    # Each rank trained on its own images: only gradient averaging keeps them identical.
    assert torch.equal(params0, params1)
    assert "World size: 2" in open(os.path.join(out, "log.txt")).read()


def test_amp_with_aw_on_cpu_trains_in_bfloat16(tiny_shapes, tmp_path):
    out = str(tmp_path / "amp")
    proc = run_tool("train_net.py", "--config-file", AW_CONFIG, *tiny_shapes["args"], *TINY_OPTS,
                    "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                    "OUTPUT_DIR", out)
    assert "SOLVER.AMP.ENABLED on CPU: bfloat16 autocast" in proc.stdout + proc.stderr
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert all(math.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)
    assert os.path.exists(os.path.join(out, "model_final.pth"))


def test_cpu_amp_trainer_runs_the_forward_under_bfloat16_autocast():
    cfg = load_config(AW_CONFIG)
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96"])
    model = build_model(cfg).train()
    seen = []
    layer = next(m for m in model.modules() if isinstance(m, AWConv2d))
    layer.register_forward_hook(lambda m, args, out: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype)))
    batch = synthetic_batch(cfg, 2, train=True)
    trainer = CPUAutocastTrainer(model, itertools.repeat(batch),
                                 torch.optim.SGD(model.parameters(), lr=1e-3))
    with EventStorage():
        trainer.run_step()
    # The layer's convolution (and its norm) ran in bfloat16; the weights stay float32.
    assert seen == [(True, torch.bfloat16, torch.bfloat16)]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_attention_stats_hook_logs_mean_abs_attention_per_stage():
    backbone = build_backbone(load_config(AW_CONFIG), ShapeSpec(channels=3))
    inputs = {}
    for name, layer in backbone.named_modules():
        if isinstance(layer, AWConv2d):
            stage = name.split(".")[1]
            torch.nn.init.constant_(layer.generator.expand.bias, {"res3": 0.1, "res4": -0.2, "res5": 0.3}[stage])
            layer.register_forward_pre_hook(
                lambda m, args, stage=stage: inputs.setdefault(stage, []).append(args[0].abs().mean().item()))
    hook = AttentionStats(backbone, period=5)
    with EventStorage() as storage:
        hook.trainer = SimpleNamespace(iter=3, max_iter=10, storage=storage)
        hook.before_step()  # iteration 4 of 10: nothing to log
        backbone(torch.randn(1, 3, 64, 64))
        hook.after_step()
        assert "aw/res3/abs_A" not in storage.latest()
        inputs.clear()
        hook.trainer.iter = 4
        hook.before_step()
        backbone(torch.randn(2, 3, 64, 64))
        hook.after_step()
        logged = {k: v for k, (v, _) in storage.latest().items()}
    for stage, value in (("res3", 0.1), ("res4", 0.2), ("res5", 0.3)):
        assert logged[f"aw/{stage}/abs_A"] == pytest.approx(value)
        assert logged[f"aw/{stage}/abs_input"] == pytest.approx(sum(inputs[stage]) / len(inputs[stage]))
