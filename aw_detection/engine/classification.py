"""Training and evaluating the classifier with Detectron2's machinery (tools/train_classification.py):
the project's Trainer (DefaultTrainer: launch/comm, CPU DDP, AMP on GPU, checkpointer,
--resume, metrics.json / tensorboard writers, LR schedulers, SGD or AdamW) with the classifier's
data and a top-1/top-5 evaluation."""
import logging

import torch
from detectron2.evaluation import inference_context
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from aw_detection.data.classification import (
    build_classification_test_loader,
    build_classification_train_loader,
    check_image_folder,
    resolve_image_folder,
)
from aw_detection.engine import Trainer
from aw_detection.engine.setup import setup
from aw_detection.errors import UserError
from aw_detection.evaluation import write_eval_results

__all__ = ["setup_classification", "ClassificationTrainer", "evaluate_classifier"]

logger = logging.getLogger("aw_detection")

NUM_CLASSES_KEY = "MODEL.CLASSIFIER.NUM_CLASSES"


def _apply_classes(cfg, classes, training, explicit_num_classes):
    """Training: the folders' classes become MODEL.CLASS_NAMES and NUM_CLASSES (a command-line
    NUM_CLASSES must agree). Evaluation: the run's classes must be the val folder's."""
    num = cfg.MODEL.CLASSIFIER.NUM_CLASSES
    if not training:
        trained = list(cfg.MODEL.CLASS_NAMES)
        if trained and trained != classes:
            raise UserError(f"the model was trained on classes {trained[:5]}... ({len(trained)}) "
                            f"but the val folder has {classes[:5]}... ({len(classes)}): evaluate "
                            "on a folder with the same class folders")
        if num != len(classes):
            raise UserError(f"{NUM_CLASSES_KEY}={num} but the val folder has {len(classes)} classes; "
                            "use the config.yaml of the run that trained the weights")
        return
    if explicit_num_classes and num != len(classes):
        raise UserError(f"{NUM_CLASSES_KEY}={num} but the image folder has {len(classes)} classes; "
                        "drop the override (it is taken from the data) or make them agree")
    if num != len(classes):
        logger.info(f"{NUM_CLASSES_KEY}: {num} -> {len(classes)} (the class folders)")
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = len(classes)
    cfg.MODEL.CLASS_NAMES = list(classes)


def _prepare_classification_data(cfg, args):
    """--data-dir into DATASETS.IMAGE_FOLDER, the image folder checked, classes taken from it."""
    if cfg.MODEL.META_ARCHITECTURE != "ImageClassifier":
        raise UserError(f"{args.config_file} is not a classification config (MODEL.META_ARCHITECTURE "
                        f"is {cfg.MODEL.META_ARCHITECTURE}); use one under configs/classification/")
    if args.data_dir:
        cfg.DATASETS.IMAGE_FOLDER = args.data_dir
    root = resolve_image_folder(cfg.DATASETS.IMAGE_FOLDER)
    classes = check_image_folder(root, check_headers=comm.get_local_rank() == 0)
    _apply_classes(cfg, classes, not args.eval_only, NUM_CLASSES_KEY in list(args.opts)[::2])


def setup_classification(args):
    """:func:`aw_detection.engine.setup.setup` with the classification data."""
    return setup(args, _prepare_classification_data)


def evaluate_classifier(model, data_loader, num_classes):
    """{"top1": %, "top5": %} over the loader's images, summed over all processes
    (top-k with k = min(5, classes))."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    k = min(5, num_classes)
    counts = torch.zeros(3, dtype=torch.long)  # top-1 hits, top-k hits, images
    with inference_context(model), torch.no_grad():
        for batch in data_loader:
            errors = [e for e in batch["error"] if e]
            if errors:
                raise UserError(errors[0])
            top = model(batch).topk(k, dim=1).indices.cpu()
            hits = top == batch["label"][:, None]
            counts += torch.tensor([int(hits[:, 0].sum()), int(hits.any(1).sum()), len(hits)])
    total = sum(comm.all_gather(counts))
    if total[2] == 0:
        raise UserError("the val folder has no images to evaluate")
    return {"top1": 100.0 * total[0].item() / total[2].item(),
            "top5": 100.0 * total[1].item() / total[2].item()}


class ClassificationTrainer(Trainer):
    """The project's Trainer with the classifier's data and evaluation; evaluation writes
    OUTPUT_DIR/eval_results.json = {"top1": %, "top5": %}."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_classification_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return build_classification_test_loader(cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = evaluate_classifier(model, cls.build_test_loader(cfg),
                                      cfg.MODEL.CLASSIFIER.NUM_CLASSES)
        if comm.is_main_process():
            path = write_eval_results(results, cfg.OUTPUT_DIR)
            logger.info(f"top-1 {results['top1']:.2f}%, top-5 {results['top5']:.2f}% "
                        f"(written to {path})")
        return results
