"""training_args.json reproduces the search where it ran: a CPU search in bf16 gives arguments
that TrainingArguments takes on that CPU, and the model card says what to change for a GPU."""

from __future__ import annotations

import json

import pytest

from conftest import hpo

pytestmark = pytest.mark.slow


def test_bf16_search_on_cpu_exports_arguments_trainer_accepts_here(make_study, tmp_path):
    from transformers import TrainingArguments

    path = make_study(name="cpu-bf16", n_trials=1, runtime={"device": "cpu", "precision": "bf16", "num_threads": 1},
                      search_space={"learning_rate": 3.0e-3, "batch_size": 32, "epochs": 1, "freeze_depth": 0})
    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    exported = hpo("export", str(path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "out" / "training_args.json").read_text())
    arguments = document["training_arguments"]
    assert arguments["bf16"] is True and arguments["use_cpu"] is True
    built = TrainingArguments(output_dir=str(tmp_path / "trainer"), **arguments)  # raised without use_cpu on a CPU-only host
    assert built.bf16 and built.use_cpu and built.device.type == "cpu"
    assert any("on a GPU remove use_cpu" in note for note in document["notes"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "on a GPU remove `use_cpu` and keep `bf16: true` only if the GPU supports bf16" in card
