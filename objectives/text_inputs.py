"""Text inputs: one text or a pair per row, tokenized once through the disk cache, padded per batch."""

from __future__ import annotations

from dataclasses import dataclass

from hpo.spec import DataSpec
from objectives.batching import Batcher
from objectives.tokens import tokenize


@dataclass(frozen=True)
class TextInputs:
    unit: str = "examples"  # the budget: examples seen

    def auto_model(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def preprocessor(self, path: str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            # Decoder-only models (GPT-2, Llama) have no pad token; padding positions are masked anyway.
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def annotate(self, report, split: str, dataset, preprocessor, data: DataSpec) -> None:
        """Nothing to add: the report has the labels."""

    def check(self, model, batches) -> None:
        """Nothing depends on the model here."""

    def batches(self, dataset, preprocessor, data: DataSpec, *, training: bool) -> Batcher:
        tokenized = tokenize(dataset, preprocessor, data.text_columns, data.max_length)
        return Batcher(tokenized, preprocessor.pad_token_id)
