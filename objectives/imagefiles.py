"""Images as data: a folder per class, a file of paths, or a hub dataset's image column.

Images stay undecoded (``{"bytes", "path"}``, datasets' ``Image(decode=False)``)
until a batch needs them, so a large image set costs no memory up front.
Duplicates and leaks between splits are found by content (a hash of the
encoded file), since the same photo often sits under two names.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from objectives.errors import ObjectiveError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_folder(where: str, image_column: str, label_column: str, split: str):
    """``where/<class>/<image>``: one sub-folder per class, its name the label."""
    import datasets

    root = Path(where)
    classes = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    paths, labels = [], []
    for folder in classes:
        for file in sorted(folder.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(file.resolve()))
                labels.append(folder.name)
    if not paths:
        raise ObjectiveError(f"data.{split}: no images in class sub-folders of {where} (expected {where}/<class>/<image>)")
    return datasets.Dataset.from_dict({image_column: paths, label_column: labels})


def as_image_column(dataset, column: str, where: str, source: str, split: str):
    """The column as undecoded images; paths in a csv/json/parquet file are relative to that file."""
    import datasets

    feature = dataset.features.get(column)
    if not isinstance(feature, datasets.Image):
        base = Path(where).parent if source in ("csv", "json", "parquet") else Path.cwd()
        resolved = []
        for row, value in enumerate(dataset[column]):
            if value is None or (isinstance(value, str) and not value.strip()):
                resolved.append(None)
                continue
            if not isinstance(value, str):
                raise ObjectiveError(f"data.image_column: {column!r} must hold image paths; the {split} split has {value!r}")
            path = (base / value).resolve()
            if not path.is_file():
                raise ObjectiveError(f"data.{split}: image not found: {value} (row {row + 1})")
            resolved.append(str(path))
        dataset = dataset.remove_columns(column).add_column(column, resolved)
    return dataset.cast_column(column, datasets.Image(decode=False))


def content_key(value: dict[str, Any]) -> str:
    data = value.get("bytes")
    if data is None:
        data = Path(value["path"]).read_bytes()
    return hashlib.sha1(data).hexdigest()


def open_image(value: dict[str, Any]):
    """One undecoded image as an RGB PIL image."""
    from PIL import Image

    source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    with Image.open(source) as image:
        return image.convert("RGB")
