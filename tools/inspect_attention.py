#!/usr/bin/env python
"""What the AW attention of a trained model does on some images.

    tools/inspect_attention.py --run output/demo/shapes_R_18_FPN_aw --input IMG|DIR|GLOB \\
        --output OUT_DIR [--layer NAME]    (or --config-file CFG MODEL.WEIGHTS model_final.pth)

Writes attention_stats.json (per AW layer: mean, std, max |A|, kernel mass moved, how much A
varies between images, mean A per kernel tap), summary.png and layer_<NAME>.png.
"""
import argparse
import os

from tabulate import tabulate

import aw_detection  # noqa: F401
from aw_detection.engine.allocator import reuse_freed_memory
from aw_detection.evaluation.attention_stats import (
    attention_statistics,
    collect_attention,
    plot_attention,
    write_statistics,
)
from aw_detection.engine.cli import add_model_arguments, model_config, user_errors
from aw_detection.errors import UserError
from aw_detection.engine.inference import Predictor, list_images


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--input", required=True, help="an image, a folder or a glob pattern")
    p.add_argument("--output", required=True)
    p.add_argument("--layer", help="layer to plot in detail (default: the last AW layer)")
    p.add_argument("--max-images", type=int, default=16)
    p.add_argument("--debug", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. MODEL.WEIGHTS")
    args = p.parse_args()
    reuse_freed_memory()

    with user_errors(args.debug):
        cfg = model_config(args)
        predictor = Predictor(cfg)
        inputs = [predictor.model_input(predictor.read(path)[1])
                  for path in list_images(args.input)[: args.max_images]]
        attention, layers = collect_attention(predictor.model, inputs)
        if not attention:
            raise UserError(f"{args.run or args.config_file}: the model has no AW layers "
                            "(MODEL.AW.ENABLED)")
        layer = args.layer or list(attention)[-1]
        if layer not in attention:
            raise UserError(f"--layer {layer}: not an AW layer; choose one of {list(attention)}")
        os.makedirs(args.output, exist_ok=True)
        stats = attention_statistics(attention, layers)
        paths = [write_statistics(stats, args.output),
                 *plot_attention(stats, attention, layer, args.output)]
        print(tabulate([[n.replace("backbone.bottom_up.", ""), f'{s["mean"]:+.4f}', f'{s["std"]:.4f}',
                         f'{s["max_abs"]:.3f}', f'{s["mass_moved"]:.4f}', f'{s["between_image_std"]:.3f}']
                        for n, s in stats.items()],
                       headers=["layer", "mean A", "std A", "max |A|", "mass moved", "between-image"],
                       tablefmt="github"))
        print("written:", ", ".join(paths))


if __name__ == "__main__":
    main()
