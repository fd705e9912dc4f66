"""Examples into batches: padding per batch, length grouping, copies to the device.

Shared by every task whose inputs are token ids (text classification and
regression); image batches live with their task.
"""

from __future__ import annotations

import numpy as np
import torch


class Batcher:
    """Pads each batch to its own longest sequence, not to ``max_length``."""

    def __init__(self, dataset, pad_token_id: int):
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
        data = dataset.with_format(None)
        self.inputs = {c: data[c] for c in columns}
        self.labels = np.asarray(data["labels"])
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        self.lengths = np.asarray([len(ids) for ids in self.inputs["input_ids"]])

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, first: "Batcher", second: "Batcher") -> "Batcher":
        """Two tokenized splits as one training set (retraining on train + validation)."""
        joined = cls.__new__(cls)
        joined.inputs = {c: list(first.inputs[c]) + list(second.inputs[c]) for c in first.inputs}
        joined.labels = np.concatenate([first.labels, second.labels])
        joined.pad = dict(first.pad)
        joined.lengths = np.concatenate([first.lengths, second.lengths])
        return joined

    def _padded(self) -> dict[str, np.ndarray]:
        """Every row padded once to the longest, so that a batch is one slice.

        Building each batch row by row from Python lists cost about 5% of a
        CPU training step (bench/throughput.py); int32 halves the memory.
        """
        if getattr(self, "_matrices", None) is None:
            width = int(self.lengths.max()) if len(self.lengths) else 0
            self._matrices = {}
            for column, rows in self.inputs.items():
                matrix = np.full((len(rows), width), self.pad[column], dtype=np.int32)
                for i, row in enumerate(rows):
                    matrix[i, : len(row)] = row
                self._matrices[column] = matrix
        return self._matrices

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        width = int(self.lengths[indices].max())
        out = {
            column: to_device(matrix[indices, :width], device).long() for column, matrix in self._padded().items()
        }
        out["labels"] = label_tensor(self.labels[indices], device)
        return out


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy through pinned memory on CUDA, so the copy does not stall the CPU.

    A copy from ordinary (pageable) memory makes the CPU wait until the GPU has
    finished every step queued so far, so the CPU cannot queue the next step
    while the GPU runs this one. Pinning costs a memcpy into PyTorch's cached
    pinned buffers. The int32 -> long cast runs on the device, after the copy
    (casting first would make a pageable temporary again).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def label_tensor(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class ids as long, regression targets as float."""
    dtype = np.float32 if labels.dtype.kind == "f" else np.int64
    return to_device(np.asarray(labels, dtype=dtype), device)


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_by_length: bool) -> list[np.ndarray]:
    """Shuffled batches; with grouping, each batch holds examples of similar length.

    Grouping sorts within random chunks ("megabatches") and then shuffles the
    batches, so padding shrinks while every epoch still sees different batches.
    A chunk is 50 batches, or fewer so that there are at least 4 chunks, as in
    Hugging Face's LengthGroupedSampler: with one chunk for the whole set (any
    set under 50 batches, the demo's included) every epoch got the same
    batches (each of texts of about one length) in a new order.
    """
    order = rng.permutation(len(lengths))
    if group_by_length:
        chunk = batch_size * max(1, min(len(order) // (batch_size * 4), 50))
        order = np.concatenate([part[np.argsort(-lengths[part], kind="stable")] for part in _slices(order, chunk)] or [order])
    batches = _slices(order, batch_size)
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _slices(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive slices of ``size``, the last may be shorter: batches, and chunks
    of whole batches (so that no batch straddles two sorted chunks)."""
    return [order[i : i + size] for i in range(0, len(order), size)]
