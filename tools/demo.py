#!/usr/bin/env python
"""Run a trained model on images; write them with drawn boxes and a detections JSON.

    tools/demo.py --run output/demo/shapes_R_18_FPN_aw --input IMG|DIR|GLOB --output OUT_DIR
    tools/demo.py --config-file CFG --input ... --output ... MODEL.WEIGHTS model_final.pth

Class names and category ids are the trained run's (its config.yaml); detections.json reports
the dataset's own category ids.
"""
import argparse
import json
import os

import cv2
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

import aw_detection  # noqa: F401  (registers backbones and datasets)
from aw_detection.engine.allocator import reuse_freed_memory
from aw_detection.data import prepare_datasets
from aw_detection.engine.cli import add_dataset_arguments, add_model_arguments, model_config, user_errors
from aw_detection.engine.inference import Predictor, detections_to_json, list_images


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--input", required=True, help="an image, a folder or a glob pattern")
    p.add_argument("--output", required=True, help="folder for the drawn images and detections.json")
    p.add_argument("--confidence", type=float, default=0.5, help="minimum score to draw and list")
    add_dataset_arguments(p)  # --dataset: class names for configs that do not name them
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. MODEL.WEIGHTS")
    args = p.parse_args()
    reuse_freed_memory()

    with user_errors(args.debug):
        cfg = model_config(args)
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence
        prepare_datasets(args.dataset, (), os.path.join(args.output, "datasets"))
        predictor = Predictor(cfg)
        paths = list_images(args.input)
        os.makedirs(args.output, exist_ok=True)
        results = []
        for path in tqdm(paths, desc="demo", disable=len(paths) == 1):
            rgb, image = predictor.read(path)
            instances = predictor(image)
            drawn = Visualizer(rgb, predictor.metadata).draw_instance_predictions(instances)
            name = os.path.splitext(os.path.basename(path))[0] + ".jpg"
            cv2.imwrite(os.path.join(args.output, name), drawn.get_image()[:, :, ::-1])
            results.append({"file": path, "output": name,
                            "detections": detections_to_json(instances, predictor.metadata)})
        with open(os.path.join(args.output, "detections.json"), "w") as f:
            json.dump(results, f, indent=2)
        total = sum(len(r["detections"]) for r in results)
        print(f"{len(paths)} images, {total} detections -> {args.output}")


if __name__ == "__main__":
    main()
