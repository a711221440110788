"""The datasets a study trains and tests on, checked before any job is submitted: a COCO
reproduction with COCO missing or incomplete is refused up front, not hours later in a job."""
import json
import os

from aw_detection.errors import UserError, few
from aw_detection.experiments.study.spec import ROOT

__all__ = ["check_datasets"]

LAYOUT = ("Detectron2's layout under $DETECTRON2_DATASETS (default ./datasets): "
          "coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/*.jpg; see "
          "docs/STUDIES.md")


def _dataset_names(spec, extra_opts):
    from aw_detection.config import load_config

    names = set()
    entries = list(spec["arms"]) + list(spec["pretrain"].values())
    for entry in entries:
        cfg = load_config(entry["config"], list(spec["opts"]) + entry["opts"] + list(extra_opts))
        if cfg.MODEL.META_ARCHITECTURE != "ImageClassifier":
            names.update(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    return sorted(names)


def _check_files(name, json_file, image_root):
    # Detectron2 resolves a relative DETECTRON2_DATASETS against the working directory: the
    # runs start in the checkout.
    json_path, root = (p if os.path.isabs(p) else os.path.join(ROOT, p) for p in (json_file, image_root))
    if not os.path.isfile(json_path):
        raise UserError(f"dataset {name}: its annotations {json_path} do not exist. {LAYOUT}")
    if not os.path.isdir(root):
        raise UserError(f"dataset {name}: its image folder {root} does not exist. {LAYOUT}")
    try:
        with open(json_path) as f:
            files = [image["file_name"] for image in json.load(f)["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"dataset {name}: {json_path} is not a COCO annotation file ({e})")
    present = set(os.listdir(root))
    missing = [f for f in files if f not in present and not os.path.exists(os.path.join(root, f))]
    if missing:
        raise UserError(f"dataset {name} is incomplete: {len(missing)} of the {len(files)} images "
                        f"listed in {json_path} are not in {root} ({few(missing, 3)}). {LAYOUT}")


def check_datasets(spec, extra_opts=()):
    """UserError unless every dataset the arms train or test on that Detectron2 knows by files
    (its builtin COCO, LVIS, ... registrations) has its annotation file and every listed
    image. Datasets of ``--dataset`` arguments are checked by each run as it starts."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in _dataset_names(spec, extra_opts):
        if name not in DatasetCatalog.list() or name.startswith("shapes_"):
            continue  # registered by the run (--dataset) or generated on first use (shapes)
        meta = MetadataCatalog.get(name)
        if hasattr(meta, "json_file") and hasattr(meta, "image_root"):
            _check_files(name, meta.json_file, meta.image_root)
