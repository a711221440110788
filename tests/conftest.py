import os
import subprocess
import sys

import pytest

# Triton's CPU interpreter runs the fused AW kernel on CPU tensors (tests/test_aw_conv_triton.py);
# Triton reads this when a kernel is defined, so before anything imports one.
os.environ.setdefault("TRITON_INTERPRET", "1")

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
