"""Deployable detectors: Detectron2's tracing export to TorchScript and ONNX, checked for parity.

The path is Detectron2's own (``tools/deploy/export_model.py --export-method tracing``):
:class:`detectron2.export.TracingAdapter` flattens the image inputs and the ``Instances`` outputs
into tuples of tensors, ``torch.jit.trace`` records one graph, and PyTorch's TorchScript-based
ONNX exporter (``torch.onnx.export(..., dynamo=False)``) converts the same trace (AWConv2d
writes its adaptive pooling for ONNX itself, so image sizes stay dynamic).

An exported model takes ``batch`` images, each a float32 (3, H, W) tensor in the model's input
format, already resized, of any H and W, and returns Detectron2's flattened outputs per image:
``pred_boxes`` (R, 4) in the input image's pixels, ``pred_classes`` (R,), [``pred_masks``
(R, 1, M, M) for Mask R-CNN], ``scores`` (R,) and ``image_size`` (2,). The batch is fixed by the
file's signature: another number of images, or a 4-D tensor, is refused. Every export is run
again from the written file and compared with the eager model at the sample size and at a second
size; a file that differs is deleted and the export refused.
"""
import contextlib
import json
import logging
import os
import re
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config.instantiate import dump_dataclass
from detectron2.export import TracingAdapter, dump_torchscript_IR
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector

from .errors import UserError

__all__ = ["FORMATS", "ONNX_OPSET", "ExportError", "compare_outputs", "export",
           "export_model", "image_tensor",
           "load_exported", "output_names", "per_image",
           "sample_images", "traceable_model", "verify_export"]

logger = logging.getLogger("aw_detection")

FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
DEPLOY_INFO = "deploy.json"
# 16 is the first opset whose RoiAlign has half_pixel coordinates, i.e. Detectron2's
# ROIAlign(aligned=True) (below it torchvision can only warn that aligned=True is unsupported).
# 17 is the one tested here.
ONNX_OPSET = 17
# Parity tolerances: float32 rounding through a deep network, not method differences.
SCORE_TOL = 1e-4
BOX_TOL = 1e-4  # times the longest image side, plus 1e-3 px
MASK_TOL = 1e-3

FIELD_MEANINGS = {
    "pred_boxes": "(R, 4) float32 x0, y0, x1, y1 in the input (resized) image's pixels",
    "pred_classes": "(R,) int64 index into class_names",
    "scores": "(R,) float32 confidence, decreasing",
    "pred_masks": "(R, 1, M, M) float32 mask probabilities inside each box: paste into the box "
                  "and threshold at 0.5",
    "image_size": "(2,) int64 height, width of the input image",
}


class ExportError(UserError):
    """The exported file does not compute what the eager model computes (it is not kept)."""


def _inference(model):
    """How Detectron2's export tool runs each meta-architecture for tracing: R-CNN without the
    final resize (ROI masks stay M x M), dense detectors (RetinaNet, FCOS) as they are."""
    if isinstance(model, GeneralizedRCNN):
        def run(model, *images):
            instances = model.inference([{"image": x} for x in images], do_postprocess=False)
            return [{"instances": i} for i in instances]
    elif isinstance(model, DenseDetector):
        def run(model, *images):
            return model([{"image": x} for x in images])
    else:
        raise UserError(f"export supports GeneralizedRCNN and dense detectors (RetinaNet, FCOS), "
                        f"not MODEL.META_ARCHITECTURE {type(model).__name__}")
    return run


def traceable_model(model, images):
    """Detectron2's TracingAdapter around ``model`` (eval) for ``images``, a list of (3, H, W)
    tensors; its outputs schema is filled by one eager run."""
    adapter = TracingAdapter(model.eval(), tuple(images), _inference(model)).eval()
    adapter(*images)
    return adapter


def _image_fields(schema):
    """[[field, ..., "image_size"] per image] of a traced detector's outputs schema."""
    if not (isinstance(schema, ListSchema) and all(
            isinstance(s, DictSchema) and isinstance(s.schemas[0], InstancesSchema)
            for s in schema.schemas)):
        raise ValueError(f"not a detector's outputs schema: {schema}")
    return [list(s.schemas[0].keys) + ["image_size"] for s in schema.schemas]


def _suffix(i, batch):
    return f"_{i}" if batch > 1 else ""


def _outputs(schema):
    """(name, image index, field) of each flattened output."""
    images = _image_fields(schema)
    return [(field + _suffix(i, len(images)), i, field)
            for i, fields in enumerate(images) for field in fields]


def output_names(schema):
    """Names of the flattened outputs of a traced detector: ``pred_boxes``, ..., ``image_size``
    per image, suffixed ``_<i>`` when the model takes more than one image."""
    return [name for name, _, _ in _outputs(schema)]


def per_image(schema, outputs):
    """Flattened outputs -> one ``{field: tensor}`` per image."""
    outputs, result = list(outputs), []
    for fields in _image_fields(schema):
        result.append(dict(zip(fields, outputs[:len(fields)], strict=True)))
        outputs = outputs[len(fields):]
    return result


def _input_names(batch):
    return ["image" + _suffix(i, batch) for i in range(batch)]


@contextlib.contextmanager
def _known_warnings_silenced():
    """Warnings every export raises that say nothing about this model."""
    with warnings.catch_warnings():
        # "might not generalize to other inputs": every export is verified at other sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # TorchScript (trace/save/load) and the TorchScript-based ONNX exporter are deprecated
        # in favour of torch.export; Detectron2's deploy path is the traced one, and
        # TorchScript is what LibTorch (C++) loads.
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        # Detectron2 indexes with nonzero / NMS / top-k results, never negative ones.
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing",
                                UserWarning)
        yield


@contextlib.contextmanager
def _native_stdout_dropped():
    """The TorchScript-based ONNX exporter prints the whole IR graph to the process's stdout
    (from C++) when it fails; the ExportError says what failed instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def export_model(adapter, images, fmt, output_dir):
    """Write ``adapter`` (:func:`traceable_model`) traced with ``images`` as OUTPUT_DIR/model.ts
    (plus Detectron2's IR dumps) or model.onnx; returns the file's path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FORMATS[fmt])
    images = tuple(images)
    with torch.no_grad(), _known_warnings_silenced():
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, images, check_trace=False)
            for p in traced.parameters():  # no autograd bookkeeping in the deployed file
                p.requires_grad_(False)
            torch.jit.save(traced, path)
            dump_torchscript_IR(traced, output_dir)
        elif fmt == "onnx":
            batch, outputs = len(images), _outputs(adapter.outputs_schema)
            axes = {"image" + _suffix(i, batch): {1: "height" + _suffix(i, batch),
                                                   2: "width" + _suffix(i, batch)}
                    for i in range(batch)}
            axes.update({name: {0: "detections" + _suffix(i, batch)}
                         for name, i, field in outputs if field != "image_size"})
            try:
                with _native_stdout_dropped():
                    torch.onnx.export(adapter, images, path, dynamo=False,
                                      opset_version=ONNX_OPSET,
                                      input_names=_input_names(batch),
                                      output_names=[name for name, _, _ in outputs],
                                      dynamic_axes=axes)
            except torch.onnx.errors.OnnxExporterError as e:
                first = str(e).splitlines()[0]
                where = re.search(r"# (\S+\.py:\d+)", first)
                raise ExportError(
                    f"ONNX cannot express this model: {first.split('[Caused by')[0].strip()}"
                    f"{f' (at {where.group(1)})' if where else ''}. --format torchscript exports "
                    "it; docs/DEPLOYMENT.md lists what ONNX does not support") from e
            import onnx

            onnx.checker.check_model(path)
        else:
            raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return path


def load_exported(path, threads=None):
    """A function images -> tuple of output tensors running the exported file: TorchScript with
    ``torch.jit.load``, ONNX with onnxruntime (``threads``: its intra-op threads)."""
    if path.endswith(".onnx"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(*images):
            outputs = session.run(None, {n: x.cpu().numpy()
                                         for n, x in zip(names, images, strict=True)})
            return tuple(torch.from_numpy(o) for o in outputs)
    else:
        with _known_warnings_silenced():
            module = torch.jit.load(path)

        def run(*images):
            with torch.no_grad():
                return tuple(module(*images))
    return run


def _match(ref, out, box_tol):
    """Pairs (i, j) of reference / exported detections with the same class, score and box
    within tolerance: in order when possible, else greedily (near-tied scores may swap)."""
    n = len(ref["scores"])
    if len(out["scores"]) != n:
        return None
    same = ((ref["pred_classes"][:, None] == out["pred_classes"][None, :])
            & ((ref["scores"][:, None] - out["scores"][None, :]).abs() <= SCORE_TOL)
            & ((ref["pred_boxes"][:, None] - out["pred_boxes"][None, :]).abs().amax(-1) <= box_tol))
    if n == 0 or bool(same.diagonal().all()):
        return torch.arange(n)
    order, free = torch.full((n,), -1), torch.ones(n, dtype=torch.bool)
    for i in range(n):
        candidates = (same[i] & free).nonzero().flatten()
        if len(candidates) == 0:
            return None
        order[i] = candidates[0]
        free[candidates[0]] = False
    return order


def compare_outputs(schema, reference, exported):
    """Compare flattened outputs image by image. Returns ``{"detections", "unmatched",
    "max_abs_diff": {field: value}}``; ``unmatched`` counts the images whose size differs or
    whose detections cannot be paired within tolerance (count, class, score, box, mask)."""
    stats = {"detections": 0, "unmatched": 0, "max_abs_diff": {}}
    diffs = stats["max_abs_diff"]
    for ref, out in zip(per_image(schema, reference), per_image(schema, exported), strict=True):
        size = ref.pop("image_size")
        if not torch.equal(size, out.pop("image_size").to(size.dtype)):
            stats["unmatched"] += 1
            continue
        order = _match(ref, out, box_tol=1e-3 + BOX_TOL * float(size.max()))
        if order is None:
            stats["unmatched"] += 1
            continue
        stats["detections"] += len(order)
        for field in ref:
            if field != "pred_classes" and len(order):
                diff = float((ref[field].float() - out[field][order].float()).abs().max())
                diffs[field] = max(diffs.get(field, 0.0), diff)
                stats["unmatched"] += field == "pred_masks" and diff > MASK_TOL
    return stats


def image_tensor(cfg, image):
    """An HxWx3 uint8 array in cfg.INPUT.FORMAT -> the model's (3, H', W') float input, resized
    as Detectron2's DefaultPredictor resizes (shortest edge MIN_SIZE_TEST, longest at most
    MAX_SIZE_TEST)."""
    from .data import inference_resize

    resized = inference_resize(cfg).get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1)))


def sample_images(cfg, path=None, batch=1):
    """``batch`` inputs to trace with: the image at ``path`` (read in cfg.INPUT.FORMAT and
    resized), else a random image at the test size (a trace does not depend on the content).
    Image i > 0 is image 0 scaled by 0.9^i, flipped when i is odd, so batch parity checks see
    distinct images."""
    if path:
        from .data import read_image

        try:
            first = image_tensor(cfg, read_image(path, cfg.INPUT.FORMAT))
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"--sample-image {path}: cannot be read as an image ({e})")
    else:
        from .data import image_size

        h, w = image_size(cfg)
        first = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    images = [first]
    for i in range(1, batch):
        image = F.interpolate(first[None], scale_factor=0.9 ** i, mode="bilinear")[0]
        images.append(image.flip(-1) if i % 2 else image)
    return images


def _rescaled(images, factor=0.75):
    return [F.interpolate(x[None], scale_factor=factor, mode="bilinear")[0] for x in images]


def verify_export(adapter, path, image_sets):
    """Run the written file on each list of images and compare with the eager model;
    raises ExportError (and deletes the file) when they differ."""
    run = load_exported(path)
    report = {"sizes": [], "detections": 0, "max_abs_diff": {}}
    for images in image_sets:
        sizes = [list(x.shape[1:]) for x in images]
        with torch.no_grad():
            reference = adapter(*images)
        try:
            # onnxruntime answers on the CPU whatever device the model was traced on.
            exported = [t.to(reference[0].device) for t in run(*images)]
            stats = compare_outputs(adapter.outputs_schema, reference, exported)
            failure = stats["unmatched"] and (
                f"the detections of {stats['unmatched']} of {len(images)} images differ beyond "
                f"tolerance (max |diff| {stats['max_abs_diff']})")
        except Exception as e:  # any failure of the written file is a refusal
            failure = f"running it failed: {str(e).strip().splitlines()[-1]}"
        if failure:
            os.remove(path)
            raise ExportError(f"the exported {os.path.basename(path)} does not match the eager "
                              f"model at input sizes {sizes}: {failure}. The file was removed; "
                              "run with --debug and report this")
        report["sizes"].append(sizes)
        report["detections"] += stats["detections"]
        for k, v in stats["max_abs_diff"].items():
            report["max_abs_diff"][k] = max(report["max_abs_diff"].get(k, 0.0), v)
    return report


def _max_image_side(cfg, model):
    """The largest (padded) image side whose AA attention maps the relative tables cover."""
    if not cfg.MODEL.AA.ENABLED:
        return None
    resnet = getattr(model.backbone, "bottom_up", model.backbone)
    strides = [resnet._out_feature_strides[stage] for stage in cfg.MODEL.AA.STAGES]
    return cfg.MODEL.AA.MAX_SIZE * min(strides)


def deploy_info(cfg, model, adapter, fmt, path, metadata, verification):
    """What a deployer needs next to the file (written as deploy.json)."""
    import detectron2
    import torchvision

    batch = len(adapter.flattened_inputs)
    outputs = [{"name": name, "image": i, "meaning": FIELD_MEANINGS.get(field, "")}
               for name, i, field in _outputs(adapter.outputs_schema)]
    info = {
        "format": fmt,
        "file": os.path.basename(path),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "device": str(model.device),
        "batch": batch,
        "inputs": [{"name": n, "shape": [3, "H", "W"], "dtype": "float32"}
                   for n in _input_names(batch)],
        "input_format": cfg.INPUT.FORMAT,
        "preprocessing": {
            "resize": "Detectron2's ResizeShortestEdge: scale = min(min_size / short side, "
                      "max_size / long side), new side = int(side * scale + 0.5), PIL "
                      "Image.resize(..., BILINEAR) on the uint8 image; boxes come back in the "
                      "resized image's pixels (multiply by original / resized size to map back)",
            "min_size": cfg.INPUT.MIN_SIZE_TEST,
            "max_size": cfg.INPUT.MAX_SIZE_TEST,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "normalization": "inside the model: give raw 0-255 pixel values; (x - pixel_mean) / "
                             "pixel_std and padding to size_divisibility happen in the file",
            "size_divisibility": model.backbone.size_divisibility,
        },
        "max_image_side": _max_image_side(cfg, model),
        "outputs": outputs,
        "outputs_schema": dump_dataclass(adapter.outputs_schema),
        "class_names": list(metadata.thing_classes),
        "category_ids": list(metadata.category_ids),
        "score_threshold": (cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
                            if isinstance(model, GeneralizedRCNN)
                            else cfg.MODEL.RETINANET.SCORE_THRESH_TEST),
        "verification": verification,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "detectron2": detectron2.__version__},
    }
    if fmt == "onnx":
        info["onnx_opset"] = ONNX_OPSET
    return info


def export(cfg, model, fmt, output_dir, metadata, sample_image=None, batch=1):
    """Export ``model`` (eval, weights loaded) to OUTPUT_DIR/model.ts|model.onnx, verify it
    against the eager model at the sample size and 3/4 of it, and write OUTPUT_DIR/deploy.json.
    Returns the deploy info."""
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    images = sample_images(cfg, sample_image, batch)
    adapter = traceable_model(model, images)
    path = export_model(adapter, images, fmt, output_dir)
    verification = verify_export(adapter, path, [images, _rescaled(images)])
    if verification["detections"] < 2 * batch:
        logger.warning(f"the check against the eager model compared only "
                       f"{verification['detections']} detections: give a --sample-image with "
                       "objects the model detects for a check of the heads as well")
    info = deploy_info(cfg, model, adapter, fmt, path, metadata, verification)
    with open(os.path.join(output_dir, DEPLOY_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return info
