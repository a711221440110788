"""The study spec: an OmegaConf structured config (types and unknown keys checked by OmegaConf),
then the checks OmegaConf cannot make (config files exist, names are unique, references
resolve). See the package docstring for the format."""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aw_detection.errors import UserError

__all__ = ["ROOT", "MODULES", "load_spec"]

# Spec paths (configs) are relative to the project checkout the package lives in.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# The runs' entry points, by module: they work from a checkout and from an installed package.
MODULES = {"detection": "aw_detection.engine.train_net",
           "classification": "aw_detection.engine.train_classification"}


@dataclass
class Pretrain:
    config: str = MISSING
    opts: List[str] = field(default_factory=list)


@dataclass
class Arm:
    name: str = MISSING
    config: str = MISSING
    opts: List[str] = field(default_factory=list)
    pretrain: Optional[str] = None  # a key of Spec.pretrain
    task: str = "detection"  # or classification


@dataclass
class Spec:
    seeds: List[int] = MISSING
    arms: List[Arm] = MISSING
    name: Optional[str] = None  # default: the file name
    title: Optional[str] = None
    description: str = ""
    baseline: Optional[str] = None  # default: the first arm
    opts: List[str] = field(default_factory=list)
    detection_args: List[str] = field(default_factory=list)
    classification_args: List[str] = field(default_factory=list)
    pretrain_output: Optional[str] = None  # relative to the study's output; default: pretrain
    pretrain: Dict[str, Pretrain] = field(default_factory=dict)


def _config_path(path, where):
    full = path if os.path.isabs(path) else os.path.join(ROOT, path)
    if not os.path.isfile(full):
        raise UserError(f"{where}: config {path} does not exist (paths are relative to {ROOT})")
    return full


def _name(value, where):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise UserError(f"{where}: name {value!r} must be letters, digits, '_', '.' or '-'")
    return value


def _structured(schema, raw, where):
    """``raw`` merged into the dataclass ``schema`` (types converted, unknown keys refused) as
    plain containers."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
        return OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = f" {e.full_key}" if getattr(e, "full_key", None) else ""
        raise UserError(f"{where}{key}: {e.msg.splitlines()[0]}")


def _parse(path):
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a study spec is a mapping with 'seeds' and 'arms'")
    # Entries first, so that an error names its place (OmegaConf's keys start at the entry).
    for i, arm in enumerate(raw.get("arms") or [] if isinstance(raw.get("arms"), list) else []):
        _structured(Arm, arm, f"{path}: arms[{i}]")
    for name, entry in (raw.get("pretrain") if isinstance(raw.get("pretrain"), dict) else {}).items():
        _structured(Pretrain, entry, f"{path}: pretrain {name}")
    return _structured(Spec, raw, f"{path}:")


def load_spec(path):
    """The spec as a dict with every default filled in; UserError naming the field otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"study spec {path} does not exist")
    spec = _parse(path)
    seeds, arms = spec["seeds"], spec["arms"]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: 'seeds' must be a non-empty list of distinct integers")
    for name, entry in spec["pretrain"].items():
        where = f"{path}: pretrain {name}"
        _name(name, where)
        entry["config"] = _config_path(entry["config"], where)
    if not arms:
        raise UserError(f"{path}: 'arms' must be a non-empty list")
    for i, arm in enumerate(arms):
        where = f"{path}: arms[{i}]"
        _name(arm["name"], where)
        if arm["task"] not in MODULES:
            raise UserError(f"{where}: task must be one of {list(MODULES)}, got {arm['task']!r}")
        if arm["pretrain"] is not None and arm["pretrain"] not in spec["pretrain"]:
            raise UserError(f"{where}: pretrain {arm['pretrain']!r} is not under 'pretrain' "
                            f"(has {sorted(spec['pretrain'])})")
        arm["config"] = _config_path(arm["config"], where)
    names = [a["name"] for a in arms]
    if len(set(names)) != len(names) or "pretrain" in names:
        raise UserError(f"{path}: arm names must be unique and not 'pretrain', got {names}")
    spec["baseline"] = spec["baseline"] or names[0]
    if spec["baseline"] not in names:
        raise UserError(f"{path}: baseline {spec['baseline']!r} is not an arm ({names})")
    if len({a["task"] for a in arms}) > 1:
        raise UserError(f"{path}: all arms must have the same task (their metrics are compared)")
    stem = os.path.splitext(os.path.basename(path))[0]
    spec.update(path=os.path.abspath(path), name=spec["name"] or stem,
                title=spec["title"] or spec["name"] or stem,
                description=spec["description"].strip())
    return spec
