"""tools/benchmark.py and aw_detection.benchmark on tiny settings."""
import json
import os

from aw_detection.benchmark import aa_memory_benchmark, layer_benchmark, time_interleaved

from .conftest import ROOT, run_tool

DEMO = os.path.join(ROOT, "configs", "demo")


def test_benchmark_models(tmp_path):
    out = str(tmp_path / "bench.json")
    opts = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MAX_SIZE_TRAIN", "128"]
    proc = run_tool("benchmark.py", "--task", "train", "--config-file", f"{DEMO}/shapes_R_18_FPN.yaml",
                    "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml", "--iters", "2",
                    "--batch-size", "2", "--output", out, *opts)
    rows = json.load(open(out))
    assert [r["config"] for r in rows] == ["shapes_R_18_FPN", "shapes_R_18_FPN_aw"]
    assert rows[0]["ratio_to_first"] == 1.0 and rows[1]["seconds_per_iter"] > 0
    assert rows[1]["params"] > rows[0]["params"] and rows[1]["gflops"] > rows[0]["gflops"] > 0
    assert rows[0]["peak_memory_mb"] > 0
    assert "shapes_R_18_FPN_aw" in proc.stdout
    proc = run_tool("benchmark.py", "--task", "inference", "--config-file",
                    f"{DEMO}/shapes_R_18_FPN.yaml", "--iters", "2", "--no-memory", *opts)
    assert "inference, batch 1" in proc.stdout


def test_benchmark_needs_a_config():
    proc = run_tool("benchmark.py", "--task", "inference", check=False)
    assert proc.returncode == 2 and "needs at least one --config-file" in proc.stderr


def test_interleaved_timing_and_layer_rows():
    calls = []
    seconds = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               iters=4, warmup=1)
    assert set(seconds) == {"a", "b"} and calls.count("a") == calls.count("b") == 5
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotates each round
    rows = layer_benchmark((1, 2), iters=1, shapes=[("tiny", 16, 6, 6)])
    assert len(rows) == 2 * 2 * 3  # batches x modes x (conv, AW-full, AW-lite)
    assert all(r["ratio"] == 1.0 for r in rows if r["layer"] == "conv")
    rows = aa_memory_benchmark(iters=1, stages=[("tiny", 32, 6, 6)])
    assert [r["impl"] for r in rows] == ["fused", "explicit", "naive"]
    assert all(r["peak_mb"] > 0 and r["ms"] > 0 for r in rows)
