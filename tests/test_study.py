"""tools/study.py: the statistics against direct computations, and a tiny study (2 arms x 2
seeds, one arm from a pre-training step) run in parallel, reused, resumed and refused."""
import json
import math
import os
import statistics

import pytest
import torch
import yaml
from scipy import stats

from aw_detection.config import load_config
from aw_detection.engine import Trainer
from aw_detection.errors import UserError
from aw_detection.experiments.study import load_spec, paired_interval, t_interval, welch_interval

from .conftest import DEMO_CONFIG, ROOT, TINY_OPTS, run_tool

STUDIES = os.path.join(ROOT, "configs", "studies")

# Seeds move both arms together (a shared per-seed offset); the arm adds ~+0.5 on every seed.
BASE = {1: 10.0, 2: 13.0, 3: 8.5, 4: 11.5, 5: 9.0}
ARM = {1: 10.6, 2: 13.4, 3: 9.1, 4: 11.9, 5: 9.5}


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    shuffled = {s: ARM[s] for s in (3, 1, 5, 2, 4)}  # pairing is by seed, not by order
    delta = paired_interval(BASE, shuffled)
    diffs = [ARM[s] - BASE[s] for s in sorted(BASE)]
    half = 2.7764451051977934 * statistics.stdev(diffs) / math.sqrt(5)  # t(0.975, 4)
    assert delta["mean"] == pytest.approx(statistics.mean(diffs))
    assert (delta["low"], delta["high"]) == pytest.approx((statistics.mean(diffs) - half,
                                                          statistics.mean(diffs) + half))
    rel = stats.ttest_rel(list(ARM.values()), list(BASE.values()))
    assert (delta["low"], delta["high"]) == pytest.approx(tuple(rel.confidence_interval(0.95)))
    assert delta["p"] == pytest.approx(rel.pvalue)
    assert delta["above"] == 5 and delta["n"] == 5 and delta["low"] > 0
    # Unpaired, the seed offsets swamp the effect: the interval is much wider and holds 0.
    unpaired = welch_interval(BASE.values(), ARM.values())
    welch = stats.ttest_ind(list(ARM.values()), list(BASE.values()), equal_var=False)
    assert (unpaired["low"], unpaired["high"]) == pytest.approx(tuple(welch.confidence_interval(0.95)))
    assert unpaired["low"] < 0 < unpaired["high"]
    assert unpaired["high"] - unpaired["low"] > 10 * (delta["high"] - delta["low"])


def test_paired_interval_uses_only_seeds_both_arms_have():
    delta = paired_interval(BASE, {1: 11.0, 2: 12.0, 9: 50.0})
    assert delta["n"] == 2 and delta["per_seed"] == {1: 1.0, 2: -1.0} and delta["mean"] == 0
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302652729911275 * 1 / math.sqrt(3))
    assert t_interval([4.0]) == (4.0, None, None)


@pytest.mark.parametrize("name", sorted(os.listdir(STUDIES)))
def test_shipped_specs_load(name):
    spec = load_spec(os.path.join(STUDIES, name))
    # Evidence specs need 3+ seeds; `make demo` pairs 2 to fit its time (and says so).
    assert spec["baseline"] == spec["arms"][0]["name"]
    assert len(spec["seeds"]) >= (2 if name == "demo.yaml" else 3)
    for arm in spec["arms"]:
        load_config(arm["config"], arm["opts"])  # every arm's config and overrides merge
    for entry in spec["pretrain"].values():
        assert load_config(entry["config"]).MODEL.META_ARCHITECTURE == "ImageClassifier"


def test_spec_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"seeds": [1], "arms": [{"name": "a", "config": "configs/demo/shapes_R_18_FPN.yaml",
                                                            "pretrain": "nope"}]}))
    with pytest.raises(UserError, match="pretrain 'nope' is not under 'pretrain'"):
        load_spec(str(path))
    path.write_text(yaml.safe_dump({"seeds": [1], "arms": [{"name": "a", "config": "missing.yaml"}]}))
    with pytest.raises(UserError, match="config missing.yaml does not exist"):
        load_spec(str(path))


def test_generator_factors_scale_only_the_generator_groups():
    def groups(*opts):
        cfg = load_config(os.path.join(ROOT, "configs", "demo", "shapes_R_18_FPN_aw.yaml"), list(opts))
        model = Trainer.build_model(cfg)
        names = {id(p): n for n, p in model.named_parameters()}
        optimizer = Trainer.build_optimizer(cfg, model)
        return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
                for p in g["params"]}

    plain = groups()
    scaled = groups("MODEL.AW.GENERATOR_LR_FACTOR", "0.1", "MODEL.AW.GENERATOR_WEIGHT_DECAY_FACTOR", "100.0")
    assert set(plain) == set(scaled)
    generator = [n for n in plain if ".generator." in n]
    assert generator and len(generator) < len(plain)
    for name, (lr, decay) in plain.items():
        factor = (0.1, 100.0) if name in generator else (1.0, 1.0)
        assert scaled[name] == pytest.approx((lr * factor[0], decay * factor[1])), name


@pytest.fixture(scope="module")
def tiny_study(tiny_shapes, tmp_path_factory):
    """A spec of 2 detection arms x 2 seeds on the tiny data; the AW arm starts from a
    (tiny) pre-training run on shapes crops."""
    from aw_detection.data.shapes_classification import generate_shapes_classification

    root = tmp_path_factory.mktemp("study")
    folder = str(root / "crops")
    generate_shapes_classification(folder, "train", 2, 41)
    generate_shapes_classification(folder, "val", 1, 42)
    spec = {
        "name": "tiny", "title": "Tiny study", "seeds": [1, 2],
        "opts": [*TINY_OPTS, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2"],
        "detection_args": tiny_shapes["args"],
        "classification_args": ["--data-dir", folder],
        "pretrain": {"aw_cls": {"config": "configs/classification/shapes_R_18_aw.yaml",
                                "opts": ["INPUT.CLASSIFICATION.TRAIN_SIZE", "32",
                                         "INPUT.CLASSIFICATION.TEST_SIZE", "32"]}},
        "arms": [{"name": "base", "config": os.path.relpath(DEMO_CONFIG, ROOT)},
                 {"name": "aw", "config": "configs/demo/shapes_R_18_FPN_aw.yaml", "pretrain": "aw_cls"}],
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = str(root / "out")
    proc = run_tool("study.py", str(path), "--output", out, "--jobs", "2")
    return {"spec": str(path), "out": out, "proc": proc}


def _rows(table, first):
    """The cells of the Markdown table rows of ``table`` whose first cell is ``first``."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in table.splitlines()
            if line.startswith("|") and line.strip("|").split(" | ")[0].strip() == first]


def _ap(run_dir):
    return next(iter(json.load(open(os.path.join(run_dir, "eval_results.json"))).values()))["bbox"]["AP"]


def test_study_runs_arms_and_seeds_and_reports_paired_deltas(tiny_study):
    out = tiny_study["out"]
    study = json.load(open(os.path.join(out, "study.json")))
    assert len(study["runs"]) == 4 and not study["missing"]
    aps = {(arm, s): _ap(os.path.join(out, arm, f"seed{s}")) for arm in ("base", "aw") for s in (1, 2)}
    base, aw = study["summary"]["arms"]
    assert base["stats"]["AP"]["mean"] == pytest.approx((aps["base", 1] + aps["base", 2]) / 2)
    per_seed = aw["paired"]["AP"]["per_seed"]
    assert {int(s): d for s, d in per_seed.items()} == pytest.approx(
        {s: aps["aw", s] - aps["base", s] for s in (1, 2)})
    run = next(r for r in study["runs"] if r["arm"] == "aw" and r["seed"] == 2)
    assert 0 <= run["pretrain_top1"] <= 100 and run["train_loss_final"] > 0
    # The AW detector started from that seed's pre-trained backbone.
    log = open(os.path.join(out, "aw", "seed2", "log.txt")).read()
    assert "pretrain/aw_cls/seed2/model_final.pth is a classification checkpoint" in log
    assert "SEED: 2" in open(os.path.join(out, "aw", "seed2", "config.yaml")).read()
    table = open(os.path.join(out, "study.md")).read()
    assert _rows(table, "`aw`")[0][1] == "2"
    assert "Δ AP paired [95% CI]" in table and "pre-training top-1" in table
    history = run["abs_A_history"]  # |A| over training, as AttentionStats logged it
    assert set(history) == {"res3", "res4", "res5"} and history["res5"][-1][0] == 1
    assert "Mean |A| over training" in table and ["`aw`", "res5"] in [r[:2] for r in _rows(table, "`aw`")]
    assert os.path.getsize(os.path.join(out, "study.png")) > 1000


def test_study_reuses_resumes_and_refuses(tiny_study):
    spec, out = tiny_study["spec"], tiny_study["out"]
    again = run_tool("study.py", spec, "--output", out)
    assert "4 of 4 arm runs finished earlier" in again.stdout and "iter " not in again.stdout
    # A run killed after its checkpoint resumes from it.
    record_path = os.path.join(out, "base", "seed1", "study_run.json")
    record = json.load(open(record_path))
    json.dump(dict(record, status="started"), open(record_path, "w"))
    resumed = run_tool("study.py", spec, "--output", out)
    assert "base seed 1: resuming from its last checkpoint" in resumed.stdout
    assert "3 of 4 arm runs finished earlier" in resumed.stdout
    # Other settings in the same folders: refused, not mixed.
    refused = run_tool("study.py", spec, "--output", out, "SOLVER.BASE_LR", "0.002", check=False)
    assert refused.returncode == 2 and "made with another command" in refused.stderr
    os.remove(os.path.join(out, "study.md"))
    run_tool("study.py", spec, "--output", out, "--report-only")
    assert _rows(open(os.path.join(out, "study.md")).read(), "`base` (baseline)")[0][1] == "2"


def test_study_rows_carry_further_test_sets_and_the_attention(tmp_path):
    from aw_detection.experiments.study.results import _attention, read_metrics

    results = {"shapes_val": {"bbox": {"AP": 10.0, "AP50": 20.0}},
               "shapes_train_eval": {"bbox": {"AP": 12.5}}}
    (tmp_path / "eval_results.json").write_text(json.dumps(results))
    metrics = read_metrics(str(tmp_path), "detection")
    assert metrics["AP"] == 10.0 and metrics["AP50"] == 20.0 and metrics["AP shapes_train_eval"] == 12.5
    records = [{"iteration": 19, "aw/res3/abs_A": 0.1, "aw/res5/abs_A": 0.3},
               {"iteration": 30, "total_loss": 1.0},
               {"iteration": 39, "aw/res3/abs_A": 0.2, "aw/res5/abs_A": 0.4, "aw/res5/abs_input": 9.0}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records))
    assert _attention(str(tmp_path)) == {
        "abs_A res3": 0.2, "abs_A res5": 0.4,
        "abs_A_history": {"res3": [[19, 0.1], [39, 0.2]], "res5": [[19, 0.3], [39, 0.4]]}}


def test_study_takes_whole_seeds_from_an_earlier_report(tiny_study, tmp_path):
    """Seeds trained elsewhere (another machine) join the report through its study.json: seeds
    not finished here are taken whole from it (and not trained); seeds finished here stay."""
    spec, out = tiny_study["spec"], tiny_study["out"]
    earlier = json.load(open(os.path.join(out, "study.json")))
    local = {(r["arm"], r["seed"]): r["AP"] for r in earlier["runs"]}
    runs = []
    for seed in (1, 2, 3, 4):  # 1, 2: copies that must not replace the runs made here
        for run in earlier["runs"]:
            if run["seed"] == (seed - 1) % 2 + 1:
                runs.append(dict(run, seed=seed, AP=run["AP"] + (1.0 if run["arm"] == "aw" else 0.0)))
    runs = [r for r in runs if not (r["seed"] == 4 and r["arm"] == "aw")]  # seed 4: incomplete
    earlier.update(runs=runs, command="python tools/study.py tiny.yaml MODEL.DEVICE cuda")
    path = str(tmp_path / "earlier.json")
    json.dump(earlier, open(path, "w"))
    proc = run_tool("study.py", spec, "--output", out, "--seeds", "1,2,3,4", "--include", path)
    # Seed 3 came from the report; seed 4, incomplete there, was trained here.
    assert "seed 3  iter" not in proc.stdout and not os.path.exists(os.path.join(out, "base", "seed3"))
    assert "aw seed 4: done" in proc.stdout
    study = json.load(open(os.path.join(out, "study.json")))
    assert not study["missing"] and len(study["runs"]) == 8
    sources = {(r["arm"], r["seed"]): r.get("source") for r in study["runs"]}
    assert {k for k, v in sources.items() if v} == {("base", 3), ("aw", 3)}
    got = {(r["arm"], r["seed"]): r["AP"] for r in study["runs"]}
    assert all(got[k] == local[k] for k in local)  # seeds 1 and 2 as trained here
    aw = study["summary"]["arms"][1]["paired"]["AP"]
    assert aw["n"] == 4 and aw["per_seed"]["3"] == pytest.approx(aw["per_seed"]["1"] + 1.0)
    text = open(os.path.join(out, "study.md")).read()
    assert f"2 runs (seeds 3) come from the earlier report `{path}`, made with " \
           "`python tools/study.py tiny.yaml MODEL.DEVICE cuda`" in text
    assert "--include" in study["command"]
    # Only a report of the same study (arms, configs, overrides).
    earlier["spec"]["arms"][1]["opts"] = ["MODEL.AW.ATTENTION_GROUPS", "4"]
    json.dump(earlier, open(path, "w"))
    refused = run_tool("study.py", spec, "--output", out, "--report-only", "--include", path,
                       check=False)
    assert refused.returncode == 2 and "a report of another study (its arms differ" in refused.stderr
