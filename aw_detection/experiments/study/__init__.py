"""Studies: arms (a config + overrides) x seeds, trained as submitit jobs (locally or on
SLURM), resumably, summarised with per-arm mean +- std and per-seed *paired* differences to
the baseline arm with 95% t-intervals (``study.json``, ``study.md``, ``study.png``). Driven by tools/study.py.

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

Runs go to ``<output>/<arm>/seed<k>`` (Detectron2 OUTPUT_DIRs), each a submitit job (local or
SLURM; submitit's folders under ``<output>/submitit``). Each records its command and state in
``study_run.json``; a finished run with the same command is reused, a killed, preempted or
timed-out one resumes from its last checkpoint, a live one is left alone, and one made with
another command is refused (``--force`` retrains).

spec (the format), runs (commands, records, the job), launch (submitit), data (datasets
checked up front), results (metrics of finished runs), report (statistics, study.md).
"""
from aw_detection.experiments.study.data import check_datasets
from aw_detection.experiments.study.launch import Resources, describe, local_slots, run_study
from aw_detection.experiments.study.report import (paired_interval, summarize, t_interval,
                                                   welch_interval, write_report)
from aw_detection.experiments.study.results import collect_results, included_seeds, read_metrics
from aw_detection.experiments.study.runs import TrainJob, label, plan_runs, run_state
from aw_detection.experiments.study.spec import ROOT, load_spec

__all__ = ["load_spec", "plan_runs", "run_study", "collect_results", "included_seeds", "summarize",
           "paired_interval", "welch_interval", "t_interval", "write_report", "check_datasets",
           "describe", "local_slots", "Resources", "TrainJob"]
