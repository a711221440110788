"""tools/benchmark.py and aw_detection.experiments.benchmark on tiny settings."""
import json
import os
import signal
import time

import pytest
import torch

from aw_detection.experiments.benchmark import (
    PeakMemoryError,
    _layer_step,
    aa_memory_benchmark,
    layer_benchmark,
    model_benchmark,
    peak_memory_mb,
    share_weights,
    synthetic_batch,
    time_interleaved,
)
from aw_detection.config import load_config

from .conftest import ROOT, run_tool, run_tool_here

DEMO = os.path.join(ROOT, "configs", "demo")


def test_benchmark_models(tmp_path):
    out = str(tmp_path / "bench.json")
    opts = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MAX_SIZE_TRAIN", "128"]
    proc = run_tool_here("benchmark.py", "--task", "train",
                         "--config-file", f"{DEMO}/shapes_R_18_FPN.yaml",
                         "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml", "--iters", "2",
                         "--batch-size", "2", "--output", out, *opts)
    rows = json.load(open(out))
    assert [r["config"] for r in rows] == ["shapes_R_18_FPN", "shapes_R_18_FPN_aw"]
    assert rows[1]["ratio_to_first"] == pytest.approx(
        rows[1]["seconds_per_iter"] / rows[0]["seconds_per_iter"])
    assert rows[1]["params"] > rows[0]["params"] and rows[1]["gflops"] > rows[0]["gflops"] > 0
    assert rows[0]["peak_memory_mb"] > 0
    assert "shapes_R_18_FPN_aw" in proc.stdout
    proc = run_tool_here("benchmark.py", "--task", "train", "--config-file",
                         f"{DEMO}/shapes_R_18_FPN.yaml", "--batched-path", "grouped",
                         check=False)
    assert proc.returncode == 2 and "--batched-path times this process only: add --no-memory" in proc.stderr


def test_gpu_preset_smoke_runs_every_arm_with_each_kernel(tmp_path):
    """On CPU --preset gpu runs the GPU benchmark's code on narrow networks; every AW arm
    really runs the kernel it names (the fused one through Triton's interpreter)."""
    proc = run_tool("benchmark.py", "--preset", "gpu", "--output-dir", str(tmp_path))
    result = json.load(open(tmp_path / "gpu_benchmark.json"))
    assert result["info"]["smoke"] and result["info"]["triton"]
    rows = result["rows"]
    detector = {(r["mode"], r["amp"], r["arm"], r["kernel"]): r for r in rows if r["section"] == "detector"}
    arms = {("baseline", None), ("AA", None)} | {(a, k) for a in ("AW-full", "AW-lite", "SE+AW")
                                                 for k in ("cudnn", "triton")}
    assert {key[2:] for key in detector} == arms
    assert {key[:2] for key in detector} == {("train", False), ("inference", True)}
    for (mode, amp, arm, kernel), r in detector.items():
        assert r["s_per_iter"] > 0 and r["ratio"] == pytest.approx(
            r["s_per_iter"] / detector[(mode, amp, "baseline", None)]["s_per_iter"])
        assert r["paths"] == (["triton"] if kernel == "triton" else [] if kernel is None else
                              ["per_sample"] if mode == "train" else ["plain"]), (mode, arm, kernel)
    classifier = [r for r in rows if r["section"] == "classification"]
    assert {(r["arm"], r["kernel"]) for r in classifier} == {
        ("baseline", None), *((a, k) for a in ("AW-full", "AW-lite") for k in ("cudnn", "triton"))}
    assert {r["layer"] for r in rows if r["section"] == "layer"} >= {"conv", "aw(G=16) triton"}
    table = open(tmp_path / "gpu_benchmark.md").read()
    assert "## R-50-FPN Faster R-CNN" in table and "## Goals" in table and "A smoke run" in table
    assert "gpu_benchmark.md" in proc.stdout


def test_share_weights_gives_the_aw_model_the_baselines_proposals():
    """A fresh AW network with the baseline's weights is the baseline's function: both see
    the same proposals, so the data-dependent parts (RoIAlign, NMS) cost the same."""
    from detectron2.modeling import build_model

    opts = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "MODEL.DEVICE", "cpu"]
    cfgs = [load_config(f"{DEMO}/{name}.yaml", opts)
            for name in ("shapes_R_18_FPN", "shapes_R_18_FPN_aw")]
    base, aw = (build_model(cfg).eval() for cfg in cfgs)
    batch = synthetic_batch(cfgs[0], 1, train=False)
    with torch.no_grad():
        assert not torch.equal(base(batch)[0]["instances"].pred_boxes.tensor,
                               aw(batch)[0]["instances"].pred_boxes.tensor)
        assert share_weights(base, aw) == len(base.state_dict())
        expected, got = base(batch)[0]["instances"], aw(batch)[0]["instances"]
    assert len(expected) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)


def test_train_step_with_the_optimizer_runs_the_update_at_rate_0():
    from detectron2.modeling import build_model

    from aw_detection.experiments.benchmark import _model_step, _optimizer

    cfg = load_config(f"{DEMO}/shapes_R_18_FPN_aw.yaml",
                      ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                       "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).train()
    optimizer = _optimizer(cfg, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _model_step(model, synthetic_batch(cfg, 2, train=True), True, optimizer)()
    # The update ran (SGD's momentum buffers exist, the AW generators' among them) and left
    # the weights as they were.
    stepped = {id(p) for p in optimizer.state}
    assert any(id(p) in stepped for n, p in model.named_parameters()
               if n.endswith(".generator.expand.weight"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert cfg.SOLVER.BASE_LR > 0 and cfg.SOLVER.MOMENTUM > 0
    with pytest.raises(ValueError, match="only a training step updates the weights"):
        model_benchmark([("a", cfg)], "inference", optimizer=True)


def test_benchmark_needs_a_config():
    proc = run_tool_here("benchmark.py", "--task", "inference", check=False)
    assert proc.returncode == 2 and "needs at least one --config-file" in proc.stderr


def test_interleaved_timing_and_layer_rows():
    calls = []
    seconds = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               iters=4, warmup=1)
    assert set(seconds) == {"a", "b"} and calls.count("a") == calls.count("b") == 5
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotates each round
    rows = layer_benchmark((1, 2), iters=1, shapes=[("tiny", 16, 6, 6)])
    assert len(rows) == 2 * 2 * 3  # batches x modes x (conv, AW-full, AW-lite)
    conv = {(r["batch"], r["mode"]): r["ms"] for r in rows if r["layer"] == "conv"}
    assert all(r["ratio"] == pytest.approx(r["ms"] / conv[r["batch"], r["mode"]]) for r in rows)
    rows = layer_benchmark((1, 2), iters=1, attention_groups=(8,), shapes=[("tiny", 16, 6, 6)],
                           paths=(None, "plain", "grouped"))
    names = {}
    for r in rows:
        names.setdefault((r["batch"], r["mode"]), []).append(r["layer"])
    assert names[1, "forward"] == ["conv", "aw(G=8)", "aw(G=8) plain", "aw(G=8) grouped"]
    assert names[2, "forward+backward"] == ["conv", "aw(G=8)", "aw(G=8) grouped"]
    rows = aa_memory_benchmark(iters=1, stages=[("tiny", 32, 6, 6)])
    assert [r["impl"] for r in rows] == ["fused", "explicit", "naive"]
    assert all(r["peak_mb"] > 0 and r["ms"] > 0 for r in rows)


def test_layer_step_backward_is_a_network_step():
    """Input gradient computed (as for every layer inside a network), parameter gradients
    fresh each step (as after zero_grad), not accumulated."""
    layer = torch.nn.Conv2d(4, 4, 3, padding=1)
    seen = []
    layer.register_full_backward_hook(lambda m, grad_in, grad_out: seen.append(grad_in[0]))
    step = _layer_step(layer, torch.randn(2, 4, 5, 5), inference=False)
    step()
    first = layer.weight.grad.clone()
    step()
    assert len(seen) == 2 and all(g is not None and g.abs().sum() > 0 for g in seen)
    torch.testing.assert_close(layer.weight.grad, first)


def _raises(size):
    raise ValueError(f"cannot build a candidate of size {size}")


def _dies(code):
    os._exit(code)


def _killed():
    os.kill(os.getpid(), signal.SIGKILL)


def _hangs():
    return lambda: time.sleep(600)


def test_peak_memory_child_that_raises_reports_the_reason():
    with pytest.raises(PeakMemoryError, match="ValueError: cannot build a candidate of size 7"):
        peak_memory_mb(_raises, 7)


@pytest.mark.parametrize("make_fn,args,timeout,reason", [
    (_dies, (3,), 120, "died \\(exit code 3\\) before reporting"),
    (_killed, (), 120, "died \\(exit code -9\\) before reporting"),
    (_hangs, (), 3, "no result after 3 s; the process was killed"),
])
def test_peak_memory_child_that_dies_or_hangs_does_not_block(make_fn, args, timeout, reason):
    with pytest.raises(PeakMemoryError, match=reason):
        peak_memory_mb(make_fn, *args, timeout=timeout)


def test_cpu_clock_counts_work_not_waiting():
    def busy():
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
    candidates = {"sleep": lambda: time.sleep(0.05), "busy": busy}
    wall = time_interleaved(candidates, iters=5, warmup=1)
    cpu = time_interleaved(candidates, iters=5, warmup=1, clock="cpu")
    # process time also counts other threads of the process (e.g. idle OpenMP workers): relative.
    assert wall["sleep"] >= 0.05 and cpu["busy"] >= 0.05 and cpu["sleep"] < 0.3 * cpu["busy"]
    with pytest.raises(ValueError, match="clock='cpu' measures CPU work"):
        time_interleaved(candidates, device="cuda", clock="cpu")
