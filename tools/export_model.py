#!/usr/bin/env python
"""Export a trained detector for deployment: TorchScript (model.ts) or ONNX (model.onnx).

    tools/export_model.py --run output/demo/shapes_R_18_FPN_aw --format torchscript --output OUT
    tools/export_model.py --config-file CFG --format onnx --export-method tracing \\
        --sample-image IMG --output OUT MODEL.WEIGHTS model_final.pth

Detectron2's deploy CLI (tools/deploy/export_model.py) with its tracing export. The file takes
--batch images, each a float32 (3, H, W) tensor in the model's input format (INPUT.FORMAT),
already resized, of any size; it returns per image pred_boxes, pred_classes, [pred_masks],
scores and image_size. OUT/deploy.json says how to prepare inputs and read outputs (class names
and dataset category ids included). Every export is re-run from the written file and compared
with the eager model at two sizes; a mismatch is an error and leaves no file.
"""
import argparse
import logging
import os

import aw_detection  # noqa: F401  (registers backbones and datasets)
from aw_detection.engine.cli import add_model_arguments, model_config, user_errors
from aw_detection.export import FORMATS, export
from aw_detection.engine.inference import build_inference_model, class_metadata


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--format", choices=list(FORMATS), default="torchscript", help="output format")
    p.add_argument("--export-method", choices=["tracing"], default="tracing",
                   help="Detectron2's tracing export (its scripting export cannot script the "
                   "attention layers; caffe2 is gone from PyTorch)")
    p.add_argument("--output", required=True, help="output directory for the exported model")
    p.add_argument("--sample-image", help="image to trace and verify with (default: a random "
                   "image at the test size; the trace does not depend on the content)")
    p.add_argument("--batch", type=int, default=1,
                   help="number of images the exported model takes (fixed in the file)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with user_errors(args.debug):
        cfg = model_config(args)
        metadata = class_metadata(cfg)
        model = build_inference_model(cfg)
        info = export(cfg, model, args.format, args.output, metadata, args.sample_image, args.batch)
        path = os.path.join(args.output, info["file"])
        check = info["verification"]
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in sorted(check["max_abs_diff"].items()))
        sizes = "; ".join(" + ".join(f"{h}x{w}" for h, w in s) for s in check["sizes"])
        print(f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.1f} MiB): {info['batch']} "
              f"image(s) in, outputs {', '.join(o['name'] for o in info['outputs'])}")
        print(f"verified against the eager model at {sizes}: {check['detections']} detections, "
              f"max |diff| {diffs or '-'}")
        print(f"deployment notes: {os.path.join(args.output, 'deploy.json')}")


if __name__ == "__main__":
    main()
