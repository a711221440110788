"""Reading images as users have them, and a DatasetMapper that uses it."""
import copy
import logging

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image, ImageOps

from ..errors import UserError

__all__ = ["RobustDatasetMapper", "image_size", "inference_resize", "read_image"]

logger = logging.getLogger("aw_detection")


SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def read_image(path, format="BGR"):
    """An image file as an HxWx3 uint8 array in ``format``: Detectron2's reader (EXIF
    orientation; grayscale, palette and RGBA converted), except for 16-bit images, whose values
    map linearly to 8 bits (v / 257): Detectron2's reader would saturate them to white."""
    with Image.open(path) as img:
        if img.mode not in SIXTEEN_BIT_MODES:
            return utils.read_image(path, format)
        img = ImageOps.exif_transpose(img)
        values = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        return utils.convert_PIL_to_numpy(img, format)


class RobustDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper (boxes only) reading with :func:`read_image`. In training an
    image that cannot be decoded is skipped with a warning (Detectron2's loader then draws
    another); at test time it is an error, since skipping would bias the evaluation."""

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        path = dataset_dict["file_name"]
        try:
            image = read_image(path, self.image_format)
        except (OSError, ValueError, SyntaxError) as e:
            if self.is_train:
                logger.warning(f"Skipping image {path}: it cannot be decoded ({e})")
                return None
            raise UserError(f"image {path} cannot be decoded ({e}); replace or remove it")
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict


def inference_resize(cfg):
    """Detectron2's test-time resize (shortest edge MIN_SIZE_TEST, longest at most
    MAX_SIZE_TEST), as its DefaultPredictor applies it."""
    return utils.build_augmentation(cfg, is_train=False)[0]


def image_size(cfg, train=False):
    """(h, w) of a 4:3 image (COCO's commonest shape) after the config's resize."""
    h = max(cfg.INPUT.MIN_SIZE_TRAIN) if train else cfg.INPUT.MIN_SIZE_TEST
    return h, min(round(h * 4 / 3), cfg.INPUT.MAX_SIZE_TRAIN if train else cfg.INPUT.MAX_SIZE_TEST)
