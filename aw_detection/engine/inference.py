"""Inference from a trained run: the model with its weights (strictly), its classes, images."""
import glob
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from aw_detection.checkpoint.checkpointer import AWCheckpointer
from aw_detection.data import inference_resize, num_classes, read_image
from aw_detection.errors import UserError

__all__ = ["Predictor", "build_inference_model", "class_metadata", "list_images",
           "detections_to_json"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(spec):
    """A file, a folder (its images, sorted) or a glob pattern -> list of paths."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, f) for f in sorted(os.listdir(spec))
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = sorted(glob.glob(os.path.expanduser(spec)))
    if not paths:
        raise UserError(f"--input {spec}: no image files found")
    return paths


def build_inference_model(cfg):
    """The config's model in eval mode with MODEL.WEIGHTS loaded strictly: weights that do not
    fit the config are refused (AWCheckpointer(strict=True)), never replaced by random ones."""
    if not cfg.MODEL.WEIGHTS:
        raise UserError("set MODEL.WEIGHTS to trained weights (e.g. OUTPUT_DIR/model_final.pth)")
    model = build_model(cfg).eval()
    AWCheckpointer(model, strict=True).load(cfg.MODEL.WEIGHTS)
    return model


def class_metadata(cfg):
    """Metadata naming the model's classes (``thing_classes``) and their dataset category ids
    (``category_ids``): a trained run's MODEL.CLASS_NAMES / CATEGORY_IDS, else those of the
    config's first test (or training) set."""
    names = list(cfg.MODEL.CLASS_NAMES)
    ids = list(cfg.MODEL.CATEGORY_IDS)
    if not names:
        datasets = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        meta = MetadataCatalog.get(datasets[0]) if datasets else Metadata()
        names = list(meta.get("thing_classes", []))
        id_map = meta.get("thing_dataset_id_to_contiguous_id")
        ids = sorted(id_map, key=id_map.get) if id_map else []
    key, num = num_classes(cfg)
    if len(names) != num:
        raise UserError(f"the config names {len(names)} classes but its model predicts {num} "
                        f"({key}); use the config.yaml of the run that trained the weights")
    return Metadata(name="model classes", thing_classes=names,
                    category_ids=ids or list(range(1, len(names) + 1)))


class Predictor(DefaultPredictor):
    """Detectron2's DefaultPredictor (test-time resize, input format) with the model loaded by
    :func:`build_inference_model`, the model's own class metadata and our image reader."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_inference_model(self.cfg)
        self.metadata = class_metadata(self.cfg)
        self.aug = inference_resize(cfg)
        self.input_format = cfg.INPUT.FORMAT

    def read(self, path):
        """The image as RGB (for drawing) and as BGR (what DefaultPredictor takes)."""
        try:
            rgb = read_image(path, "RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"{path}: cannot be read as an image ({e})")
        return rgb, rgb[:, :, ::-1]

    def model_input(self, bgr):
        """The model's input dict for an HxWx3 BGR image, as DefaultPredictor builds it."""
        image = bgr[:, :, ::-1] if self.input_format == "RGB" else bgr
        h, w = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": h, "width": w}

    def __call__(self, bgr):
        return super().__call__(bgr)["instances"].to("cpu")


def detections_to_json(instances, metadata):
    """Detections with the dataset's category ids and class names (COCO-style xywh boxes)."""
    names, ids = metadata.thing_classes, metadata.category_ids
    out = []
    for box, score, cls in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(),
                               instances.pred_classes.tolist()):
        x0, y0, x1, y1 = box
        out.append({"category_id": ids[cls], "category": names[cls], "score": round(score, 4),
                    "bbox": [round(v, 1) for v in (x0, y0, x1 - x0, y1 - y0)]})
    return out
