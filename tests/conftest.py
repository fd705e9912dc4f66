"""Shared fixtures: a tiny real transformer, small real data, real databases.

Nothing is mocked. The model is a 2-layer BERT with hidden size 32, saved the
way a hub checkpoint is (body without classification head); the data is a
made-up but learnable sentiment task written to CSV files; studies run in a
real SQLite file or the local PostgreSQL.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

POSTGRES_URL = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

POSITIVE = ["good", "great", "excellent", "love", "nice", "tasty", "fresh", "perfect"]
NEGATIVE = ["bad", "awful", "poor", "hate", "terrible", "stale", "bland", "broken"]
FILLER = ["the", "coffee", "tea", "box", "was", "really", "and", "it", "arrived", "product", "flavor", "price"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["HPO_CACHE_DIR"] = str(tmp_path_factory.mktemp("tokenized"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.pop("HPO_STORAGE", None)


def make_sentences(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 5) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT body (hidden 32) "pretrained" on the task's words, saved like a hub checkpoint.

    A randomly initialised body needs many epochs to learn anything; a few
    seconds of pre-training on other sentences gives it features a short
    fine-tune can use, as a real pretrained model would.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    rows = make_sentences(400, 99)
    inputs = tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([label == "pos" for _, label in rows]).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(4):
        order = torch.randperm(len(rows))
        for start in range(0, len(rows), 32):
            batch = order[start : start + 32]
            loss = model(input_ids=inputs["input_ids"][batch], attention_mask=inputs["attention_mask"][batch], labels=labels[batch]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.bert.save_pretrained(folder)  # the body only: the classifier head is missing, as on the hub
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(folder / "train.csv", make_sentences(160, 1)),
        "validation": write_csv(folder / "validation.csv", make_sentences(48, 2)),
        "test": write_csv(folder / "test.csv", make_sentences(48, 3)),
    }


def study_dict(model_dir: Path, files: dict[str, Path], **overrides) -> dict:
    """A small study on the tiny model; overrides replace top-level keys."""
    study = {
        "name": f"test-{uuid.uuid4().hex[:8]}",
        "n_trials": 3,
        "seed": 0,
        "model": str(model_dir),
        "data": {
            "source": "csv",
            "train": str(files["train"]),
            "validation": str(files["validation"]),
            "test": str(files["test"]),
            "max_length": 32,
        },
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "pruner": {"type": "median", "n_startup_trials": 1},
        "runtime": {"num_threads": 1},
        "search_space": {
            "learning_rate": {"low": 1.0e-3, "high": 5.0e-3, "log": True},
            "batch_size": {"choices": [16, 32]},
            "epochs": {"low": 1, "high": 2},
            "freeze_depth": {"low": 0, "high": 1},
        },
    }
    study.update(overrides)
    return study


@pytest.fixture
def make_study(tmp_path, tiny_model, tiny_data):
    """Write a study file into a fresh folder; returns its path. Storage defaults to SQLite there."""

    def make(**overrides) -> Path:
        overrides.setdefault("storage", f"sqlite:///{tmp_path / 'hpo.db'}")
        path = tmp_path / f"{overrides.get('name', 'study')}.yaml"
        path.write_text(yaml.safe_dump(study_dict(tiny_model, tiny_data, **overrides), sort_keys=False))
        return path

    return make


def hpo(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the CLI exactly as a user would type it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real local PostgreSQL. Unreachable is a failure, never a skip: CI must test it."""
    from sqlalchemy import create_engine

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required for these tests: {exc}")
    finally:
        engine.dispose()
    return POSTGRES_URL


@dataclass(frozen=True)
class Launched:
    path: Path  # the study file
    storage: str
    name: str
    folder: Path
    result: subprocess.CompletedProcess  # the launch's output (not a terminal: line progress)


@pytest.fixture(scope="session")
def launched_study(tmp_path_factory, tiny_model, tiny_data) -> Launched:
    """One small study launched for real through the CLI, shared by the tests that only read it
    (dashboard, browser, report, progress lines): launching is the slow part. Do not write to it."""
    folder = tmp_path_factory.mktemp("launched")
    storage = f"sqlite:///{folder / 'hpo.db'}"
    path = folder / "watched.yaml"
    path.write_text(yaml.safe_dump(study_dict(tiny_model, tiny_data, name="watched-study", n_trials=4, storage=storage), sort_keys=False))
    result = hpo("launch", str(path), cwd=folder)
    assert result.returncode == 0, result.stderr
    return Launched(path=path, storage=storage, name="watched-study", folder=folder, result=result)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_model) -> Path:
    """A 2-layer Llama-style decoder body (hidden 32) with the tiny BERT's tokenizer, saved like a hub
    checkpoint: enough to check that adapters find a decoder's attention and MLP projections."""
    import shutil

    import torch
    from transformers import BertTokenizerFast, LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("tiny-llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, folder / name)
    vocab = len(BertTokenizerFast.from_pretrained(tiny_model))
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(folder)
    return folder
