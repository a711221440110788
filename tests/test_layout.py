"""The package reads bottom-up: a module imports only from its own layer or those below it."""
import ast
import os

import pytest

from .conftest import ROOT

PACKAGE = os.path.join(ROOT, "aw_detection")
# Top-level module or subpackage of aw_detection -> its layer.
LAYERS = {"errors": 0, "config": 0, "layers": 1, "modeling": 2, "checkpoint": 3, "data": 3,
          "evaluation": 4, "engine": 5, "lazy_config": 5, "export": 6, "experiments": 7,
          "benchmark": 7, "gpu_benchmark": 7, "study": 7}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), PACKAGE)


def _imported(path):
    """Top-level aw_detection names that ``path`` imports (absolute or relative)."""
    parts = path[:-3].split(os.sep)
    tree = ast.parse(open(os.path.join(PACKAGE, path)).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level]
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from . import a, b" in the package's __init__
                    yield from (alias.name for alias in node.names)
                else:
                    yield target[0]
            elif node.module and node.module.split(".")[0] == "aw_detection":
                names = node.module.split(".")[1:]
                yield from (names[:1] or [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "aw_detection" and len(names) > 1:
                    yield names[1]


@pytest.mark.parametrize("path", sorted(p for p in _modules() if p != "__init__.py"))
def test_module_imports_no_layer_above_its_own(path):
    layer = path[:-3].split(os.sep)[0]
    assert layer in LAYERS, f"{path}: add its layer to LAYERS"
    above = sorted({name for name in _imported(path) if LAYERS.get(name, -1) > LAYERS[layer]})
    assert not above, f"{path} (layer {layer}) imports {above} from above it"
