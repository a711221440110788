"""The evidence tools on tiny settings: compare, demo, inspect_attention, analyze_model."""
import csv
import json
import os

import pytest
import torch
from detectron2.modeling import build_model

from aw_detection.evaluation.attention_stats import attention_statistics
from aw_detection.config import load_config
from aw_detection.layers import AWConv2d

from .conftest import ROOT, TINY_OPTS, run_tool, run_tool_here

DEMO = os.path.join(ROOT, "configs", "demo")


@pytest.fixture(scope="module")
def runs(tiny_shapes, tmp_path_factory):
    """Tiny trained runs: baseline (2 seeds) and AW. 5 iterations: Detectron2 times
    iterations only after 3 warm-up ones."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, config, seed in (("base", "shapes_R_18_FPN", 1), ("base_s2", "shapes_R_18_FPN", 2),
                               ("aw", "shapes_R_18_FPN_aw", 1)):
        out[name] = str(root / name)
        run_tool("train_net.py", "--config-file", os.path.join(DEMO, f"{config}.yaml"),
                 *tiny_shapes["args"], *TINY_OPTS, "SOLVER.MAX_ITER", "5", "SEED", str(seed),
                 "OUTPUT_DIR", out[name])
    return out


def test_compare_writes_table_csv_and_plot(runs, tmp_path):
    proc = run_tool_here("compare.py", runs["base"], runs["aw"], "--output", str(tmp_path))
    table = open(tmp_path / "comparison.md").read()
    assert table in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [r["run"] for r in rows] == ["base", "aw"]
    results = {k: json.load(open(os.path.join(runs[k], "eval_results.json")))["tiny_val"]["bbox"]
               for k in ("base", "aw")}
    for metric in ("AP", "AP50", "AP75"):
        assert float(rows[1][metric]) == pytest.approx(results["aw"][metric])
        assert float(rows[1]["d_" + metric]) == pytest.approx(
            results["aw"][metric] - results["base"][metric])
    base_params = sum(p.numel() for p in build_model(load_config(
        os.path.join(runs["base"], "config.yaml"))).parameters())
    assert int(rows[0]["params"]) == base_params
    aw_row = next(line for line in table.splitlines() if line.startswith("| aw "))
    delta = results["aw"]["AP"] - results["base"]["AP"]
    assert f'{results["aw"]["AP"]:.2f} ({delta:+.2f})' in aw_row
    assert os.path.getsize(tmp_path / "comparison.png") > 1000


def test_compare_groups_seeds(runs, tmp_path):
    run_tool_here("compare.py", runs["base"], runs["base_s2"], runs["aw"], "--seeds", "--output",
                  str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [int(r["seeds"]) for r in rows] == [2, 1]
    aps = [json.load(open(os.path.join(runs[k], "eval_results.json")))["tiny_val"]["bbox"]["AP"]
           for k in ("base", "base_s2")]
    assert float(rows[0]["AP"]) == pytest.approx(sum(aps) / 2)
    assert "±" in open(tmp_path / "comparison.md").read()


def test_compare_without_results_is_a_clear_error(tmp_path):
    proc = run_tool_here("compare.py", str(tmp_path), check=False)
    assert proc.returncode != 0 and "has no eval_results.json" in proc.stderr


def test_demo_draws_and_lists_detections(runs, tiny_shapes, tmp_path):
    image_dir = tiny_shapes["splits"]["val"][1]
    weights = os.path.join(runs["aw"], "model_final.pth")
    out = str(tmp_path / "demo")
    run_tool_here("demo.py", "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml", "--input", image_dir,
                  "--output", out, "--confidence", "0.0", "MODEL.WEIGHTS", weights,
                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    results = json.load(open(os.path.join(out, "detections.json")))
    assert len(results) == 6 and all(os.path.exists(os.path.join(out, r["output"])) for r in results)
    det = results[0]["detections"][0]
    assert det["category"] in ("circle", "rectangle", "triangle", "star", "cross")
    assert len(det["bbox"]) == 4 and 0 <= det["score"] <= 1
    proc = run_tool_here("demo.py", "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml", "--input",
                         str(tmp_path / "none*.png"), "--output", out, "MODEL.WEIGHTS", weights,
                         check=False)
    assert proc.returncode == 2 and "no image files found" in proc.stderr


def test_inspect_attention(runs, tiny_shapes, tmp_path):
    out = str(tmp_path / "inspect")
    proc = run_tool_here("inspect_attention.py", "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml",
                         "--input", tiny_shapes["splits"]["val"][1], "--output", out, "--max-images", "3",
                         "MODEL.WEIGHTS", os.path.join(runs["aw"], "model_final.pth"))
    stats = json.load(open(os.path.join(out, "attention_stats.json")))
    assert len(stats) == 12  # R-18 res3-res5: 6 blocks x 2 convs
    first = next(iter(stats.values()))
    assert first["images"] == 3 and len(first["tap_mean"]) == 3
    last = list(stats)[-1]  # the layer plotted in detail by default
    assert sorted(os.listdir(out)) == sorted(
        ["attention_stats.json", "summary.png", f"layer_{last.replace('.', '_')}.png"])
    assert "mass moved" in proc.stdout
    proc = run_tool_here("inspect_attention.py", "--config-file", f"{DEMO}/shapes_R_18_FPN.yaml",
                         "--input", tiny_shapes["splits"]["val"][1], "--output", out,
                         "MODEL.WEIGHTS", os.path.join(runs["base"], "model_final.pth"),
                         check=False)
    assert proc.returncode == 2 and "has no AW layers" in proc.stderr


def test_attention_statistics_by_hand():
    layer = AWConv2d(2, 2, 3)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    a = torch.zeros(2, 2, 2, 3, 3)
    a[0] = 0.5  # image 0: +50% everywhere; image 1: no change
    stats = attention_statistics({"l": a}, {"l": layer})["l"]
    assert stats["mass_moved"] == pytest.approx(0.25)  # mean over images of 0.5 and 0
    assert stats["max_abs"] == 0.5 and stats["mean"] == pytest.approx(0.25)
    assert stats["between_image_std"] > 0.9  # all variation is between the images


def test_analyze_model_counts_parameters_and_flops(tmp_path):
    out = str(tmp_path / "rows.json")
    proc = run_tool_here("analyze_model.py", "--config-file", f"{DEMO}/shapes_R_18_FPN.yaml",
                         "--config-file", f"{DEMO}/shapes_R_18_FPN_aw.yaml", "--height", "96",
                         "--width", "128", "--output", out)
    base, aw = json.load(open(out))
    models = [build_model(load_config(f"{DEMO}/{name}.yaml"))
              for name in ("shapes_R_18_FPN", "shapes_R_18_FPN_aw")]
    assert [base["params"], aw["params"]] == [sum(p.numel() for p in m.parameters()) for m in models]
    assert aw["extra_params"] == aw["params"] - base["params"] > 0
    assert base["input"] == [96, 128]
    # AW adds its generators and the kernel modulation: a little, not nothing.
    assert base["backbone_gflops"] < aw["backbone_gflops"] < 1.1 * base["backbone_gflops"]
    assert "Input 96x128; deltas against shapes_R_18_FPN.yaml" in proc.stdout
