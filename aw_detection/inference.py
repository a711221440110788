"""Inference on image files: a predictor and helpers for tools/demo.py."""
import glob
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .data import read_image
from .engine import AWCheckpointer
from .errors import UserError

__all__ = ["Predictor", "list_images", "detections_to_json"]

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


class Predictor:
    """Model from a config with weights loaded (AWCheckpointer's clear errors), test-time
    resize as in Detectron2's DefaultPredictor, images read with our robust reader."""

    def __init__(self, cfg):
        if not cfg.MODEL.WEIGHTS:
            raise UserError("set MODEL.WEIGHTS to trained weights (e.g. OUTPUT_DIR/model_final.pth)")
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        AWCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        names = cfg.DATASETS.TEST or cfg.DATASETS.TRAIN
        self.metadata = MetadataCatalog.get(names[0]) if names else MetadataCatalog.get("__unused")

    def read(self, path):
        """The image as RGB (for drawing) and in the model's input format."""
        try:
            rgb = read_image(path, "RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"{path}: cannot be read as an image ({e})")
        return rgb, (rgb[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else rgb)

    def model_input(self, image):
        """The model's input dict for an HxWxC image in the model's format."""
        h, w = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": h, "width": w}

    @torch.no_grad()
    def __call__(self, image):
        return self.model([self.model_input(image)])[0]["instances"].to("cpu")


def detections_to_json(instances, class_names):
    out = []
    for box, score, cls in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(),
                               instances.pred_classes.tolist()):
        x0, y0, x1, y1 = box
        out.append({"category_id": cls,
                    "category": class_names[cls] if cls < len(class_names) else str(cls),
                    "score": round(score, 4),
                    "bbox": [round(v, 1) for v in (x0, y0, x1 - x0, y1 - y0)]})
    return out
