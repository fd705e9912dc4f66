"""``task: image-classification``: a pretrained vision model (ResNet, ViT, ConvNeXt, ...).

The model comes through ``AutoModelForImageClassification`` with its image
processor (resize, crop, normalise as the checkpoint was trained); a new head
replaces the checkpoint's (an ImageNet head has 1,000 classes). Everything
else is text classification's: data hygiene (duplicates and leaks found by
image content), class weights, freezing (the stem plus the bottom k stages or
blocks), the training loop, evaluation points, pruning and retraining. Only
the inputs differ: images are decoded per batch, lightly augmented in
training (random crop and horizontal flip, ``data.augment``), and handed to
the processor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from hpo.spec import DataSpec
from objectives.batching import label_tensor
from objectives.data import LabelledRows
from objectives.heads import ClassificationHead
from objectives.imagefiles import open_image
from objectives.task import Task

# Random crops keep at least this share of each side: light enough not to cut the object away.
MIN_CROP = 0.8


class ImageBatcher:
    """Decodes, augments and preprocesses the images of one batch."""

    def __init__(self, dataset, column: str, processor, augment: bool = False):
        data = dataset.with_format(None)
        self.images = list(data[column])
        self.labels = np.asarray(data["labels"])
        self.lengths = np.ones(len(self.labels), dtype=np.int64)  # no padding: every image is one size after processing
        self.processor = processor
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def units(self) -> np.ndarray:
        """Budget units per row: one example each."""
        return np.ones(len(self.labels), dtype=np.int64)

    @classmethod
    def concat(cls, first: "ImageBatcher", second: "ImageBatcher") -> "ImageBatcher":
        """Train + validation as one training set (retraining); augmented like train."""
        joined = cls.__new__(cls)
        joined.images = first.images + second.images
        joined.labels = np.concatenate([first.labels, second.labels])
        joined.lengths = np.concatenate([first.lengths, second.lengths])
        joined.processor, joined.augment = first.processor, first.augment
        return joined

    def batch(self, indices, device: torch.device) -> dict[str, torch.Tensor]:
        pictures = [open_image(self.images[int(i)]) for i in indices]
        if self.augment:
            pictures = [augment(p) for p in pictures]
        pixels = self.processor(images=pictures, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels.to(device, non_blocking=True), "labels": label_tensor(self.labels[np.asarray(indices)], device)}


def augment(image):
    """A random crop of 80-100% of each side, then a horizontal flip half of the time.

    Draws from Python's ``random``, which the training loop seeds per run, so
    a trial sees the same augmented images when it is run again.
    """
    from PIL import Image

    width, height = image.size
    scale = random.uniform(MIN_CROP, 1.0)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = random.randint(0, width - w), random.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if random.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


@dataclass(frozen=True)
class ImageInputs:
    unit: str = "examples"  # the budget: examples seen

    def auto_model(self):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def preprocessor(self, path: str):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path)

    def annotate(self, report, split: str, dataset, preprocessor, data: DataSpec) -> None:
        """Nothing to add: the report has the labels."""

    def check(self, model, batches) -> None:
        """Nothing depends on the model here."""

    def batches(self, dataset, preprocessor, data: DataSpec, *, training: bool) -> ImageBatcher:
        return ImageBatcher(dataset, data.image_column, preprocessor, augment=training and data.augment)


TASK = Task("image-classification", LabelledRows(), ImageInputs(), ClassificationHead())
