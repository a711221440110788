"""A deterministic synthetic detection dataset, written once as PNG files + COCO JSON.

Five classes of filled shapes with varied size, aspect, rotation and colour, drawn over
gradient + noise backgrounds with line clutter. Later shapes occlude earlier ones; a box is
the tight box of the *visible* pixels, and a shape less than 35% visible is not annotated.
Some images are crowded, some are empty. Every image depends only on (seed, split, index).
"""
import json
import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES_CLASSES", "SPLITS", "draw_image", "generate_shapes", "shapes_root", "ensure_generated",
           "ensure_shapes"]

SHAPES_CLASSES = ["circle", "rectangle", "triangle", "star", "cross"]
# name -> (number of images, seed). Bump VERSION when drawing changes: it names the cache.
SPLITS = {"train": (400, 1), "val": (100, 2)}
VERSION = 3
MIN_VISIBLE = 0.35


def shapes_root():
    """Cache folder: $DETECTRON2_DATASETS/shapes_v<VERSION> (default ./datasets, like Detectron2)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), f"shapes_v{VERSION}")


def _outline(kind, rng, cx, cy, size):
    """Polygon points (or an ellipse box for circles) of one shape."""
    angle = rng.uniform(0, 2 * math.pi)
    aspect = math.exp(rng.uniform(-0.6, 0.6))
    sx, sy = size * math.sqrt(aspect) / 2, size / math.sqrt(aspect) / 2
    if kind == "circle":
        return None, (cx - sx, cy - sy, cx + sx, cy + sy)
    if kind == "rectangle":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "star":
        inner = rng.uniform(0.38, 0.5)
        pts = [((1 if i % 2 == 0 else inner) * math.cos(i * math.pi / 5 - math.pi / 2),
                (1 if i % 2 == 0 else inner) * math.sin(i * math.pi / 5 - math.pi / 2))
               for i in range(10)]
    else:  # cross
        t = rng.uniform(0.25, 0.4)
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t),
               (-1, t), (-1, -t), (-t, -t)]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * sx * cos - y * sy * sin, cy + x * sx * sin + y * sy * cos) for x, y in pts], None


def _background(rng, h, w):
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = t[None, :, None] if len(t) == w else t[:, None, None]
    img = c0 * (1 - ramp) + c1 * ramp + rng.normal(0, rng.uniform(2, 8), (h, w, 3))
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # clutter: lines and arcs that are not objects
        xy = [float(v) for v in rng.uniform(0, [w, h, w, h])]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            draw.line(xy, fill=colour, width=int(rng.integers(1, 4)))
        else:
            x0, y0 = min(xy[0], xy[2]), min(xy[1], xy[3])
            draw.arc((x0, y0, x0 + 40, y0 + 40), 0, float(rng.uniform(60, 270)), fill=colour, width=2)
    return img


def draw_image(rng, h, w):
    img = _background(rng, h, w)
    owner = np.zeros((h, w), np.int32)  # which shape (1-based) owns each pixel
    shapes = []
    r = rng.random()
    count = 0 if r < 0.06 else int(rng.integers(7, 11)) if r < 0.14 else int(rng.integers(1, 5))
    for k in range(1, count + 1):
        category = int(rng.integers(len(SHAPES_CLASSES)))
        size = float(math.exp(rng.uniform(math.log(32), math.log(128))))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        polygon, ellipse = _outline(SHAPES_CLASSES[category], rng, cx, cy, size)
        mask = Image.new("L", (w, h), 0)
        if polygon:
            ImageDraw.Draw(mask).polygon(polygon, fill=255)
        else:
            ImageDraw.Draw(mask).ellipse(ellipse, fill=255)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        img.paste(Image.new("RGB", (w, h), colour), mask=mask)
        full = np.asarray(mask) > 0
        owner[full] = k
        shapes.append((category, int(full.sum())))
    annotations = []
    for k, (category, full_area) in enumerate(shapes, 1):
        ys, xs = np.nonzero(owner == k)
        if full_area == 0 or len(xs) < MIN_VISIBLE * full_area:
            continue
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        annotations.append({"category_id": category + 1, "area": int(len(xs)), "iscrowd": 0,
                            "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]})
    return img, annotations


def generate_shapes(out_dir, split, num_images, seed):
    """Write ``out_dir/<split>/*.png`` and ``out_dir/<split>.json``; returns the JSON path."""
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        h, w = int(rng.integers(224, 289)), int(rng.integers(224, 321))
        img, anns = draw_image(rng, h, w)
        name = f"{i:05d}.png"
        img.save(os.path.join(image_dir, name))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES_CLASSES)]
    json_file = os.path.join(out_dir, f"{split}.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


def ensure_generated(root, write):
    """``write(folder)`` once into ``root`` unless it is there: written aside and renamed, so
    that several processes may ask at once and a killed one leaves no half-written set."""
    if os.path.exists(os.path.join(root, "DONE")):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".generating-", dir=parent)
    write(tmp)
    open(os.path.join(tmp, "DONE"), "w").close()
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_shapes(root=None):
    """Generate every split under ``root`` unless already there; safe with several processes."""
    def write(folder):
        for split, (num_images, seed) in SPLITS.items():
            generate_shapes(folder, split, num_images, seed)
    return ensure_generated(root or shapes_root(), write)
