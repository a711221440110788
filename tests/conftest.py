import contextlib
import io
import logging
import os
import random
import runpy
import subprocess
import sys

import pytest

# Triton's CPU interpreter runs the fused AW kernel on CPU tensors (tests/test_aw_conv_triton.py);
# Triton reads this when a kernel is defined, so before anything imports one.
os.environ.setdefault("TRITON_INTERPRET", "1")

import aw_detection  # noqa: E402,F401  (registers the datasets a fresh process has)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

FRESH_DATASETS = frozenset(DatasetCatalog)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "shapes_R_18_FPN.yaml")

# Tiny, fast overrides for the demo config: a couple of iterations on ~128 px images.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # an untrained model still detects something
]


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A tiny shapes dataset: {split: (json_file, image_dir)} and --dataset arguments."""
    from aw_detection.data import generate_shapes

    root = str(tmp_path_factory.mktemp("tiny_shapes"))
    splits = {}
    for split, (count, seed) in {"train": (12, 11), "val": (6, 12)}.items():
        splits[split] = (generate_shapes(root, split, count, seed), os.path.join(root, split))
    args = []
    for split, (json_file, image_dir) in splits.items():
        args += ["--dataset", f"tiny_{split}={json_file}:{image_dir}"]
    return {"splits": splits, "args": args}


def run_tool(tool, *args, check=True, timeout=600, env=None):
    """Run tools/<tool> in a subprocess (the real CLI path); returns CompletedProcess."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _loggers():
    return [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                    if isinstance(lg, logging.Logger)]


def run_tool_here(tool, *args, check=True):
    """Run tools/<tool> as ``__main__`` in this process: the same code as :func:`run_tool`
    without a fresh interpreter's imports (~6 s), for a tool that starts no training run.
    Returns a CompletedProcess; what the call registered or set up globally (datasets, log
    handlers, RNG state) is undone afterwards. An exception other than SystemExit propagates,
    so a traceback fails the test."""
    import numpy as np
    import torch
    from detectron2.utils import logger as d2_logger

    # The tool sees the datasets a fresh process has, not those tests registered here.
    catalogs = [(catalog, dict(catalog.data)) for catalog in (DatasetCatalog, MetadataCatalog)]
    for catalog, _ in catalogs:
        catalog.data = {k: v for k, v in catalog.data.items() if k in FRESH_DATASETS}
    handlers = {lg: (list(lg.handlers), lg.propagate, lg.level) for lg in _loggers()}
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    argv, out, err, code = sys.argv, io.StringIO(), io.StringIO(), 0
    sys.argv = [os.path.join(ROOT, "tools", tool), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        for catalog, saved in catalogs:
            catalog.data = saved
        for lg in _loggers():
            lg.handlers[:], lg.propagate, level = handlers.get(lg, ([], True, logging.NOTSET))
            lg.setLevel(level)
        d2_logger.setup_logger.cache_clear()  # its handlers write to this call's streams
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
    if check and code != 0:
        raise AssertionError(f"{tool} failed ({code}):\n{out.getvalue()[-3000:]}\n{err.getvalue()[-5000:]}")
    return subprocess.CompletedProcess([tool, *args], code, out.getvalue(), err.getvalue())
