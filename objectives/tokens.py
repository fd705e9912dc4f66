"""Tokenization, done once per dataset and tokenizer and shared through the disk.

The cache key covers the split's content fingerprint, the tokenizer's
vocabulary and settings, ``max_length`` and the text columns, so a second
worker or a resumed launch memory-maps the Arrow files instead of tokenizing
again, and any change to those inputs gets a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpo" / "tokenized"
    return Path(os.environ.get("HPO_CACHE_DIR", default))


def _tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary as JSON: datasets' dill-based Hasher took about 2 s
    per split for a 30k vocabulary, paid by every worker before its first trial."""
    parts = [type(tokenizer).__name__, tokenizer.name_or_path, sorted(tokenizer.get_vocab().items()), tokenizer.padding_side]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_key(dataset, tokenizer, text_columns: tuple[str, ...], max_length: int) -> str:
    return _key(dataset, tokenizer, [list(text_columns), max_length, "v1"])


def _key(dataset, tokenizer, parts: list) -> str:
    parts = [dataset._fingerprint, _tokenizer_fingerprint(tokenizer), *parts]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def tokenize(dataset, tokenizer, text_columns: tuple[str, ...], max_length: int):
    """The dataset as model inputs plus ``labels``, unpadded (padding happens per batch)."""

    def encode(batch):
        texts = [batch[c] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        return {k: v for k, v in encoded.items() if k in MODEL_INPUTS}

    return cached_map(dataset, cache_key(dataset, tokenizer, text_columns, max_length), encode, keep=("labels",))


def cached_map(dataset, key: str, encode, keep: tuple[str, ...] = (), batched: bool = True):
    """``dataset.map(encode)`` once per key on this machine, shared through the disk."""
    import datasets

    path = cache_root() / key
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    tokenized = dataset.map(
        encode, batched=batched, remove_columns=[c for c in dataset.column_names if c not in keep], desc=None
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the final place and rename: concurrent workers never read a half-written entry.
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        tokenized.save_to_disk(str(staging))
        os.replace(staging, path)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another worker won the race; its copy is identical
    return datasets.load_from_disk(str(path))
