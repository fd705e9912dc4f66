"""Generation metrics for language models: greedy decoding on a fixed subset of validation rows.

A lower validation loss does not always mean better answers (Tribes et al.
2023), so a study may rank trials by what the model writes. The subset is
the first ``data.max_generation_samples`` validation rows, the same for every
trial and every evaluation point; decoding is greedy and batched, prompts
padded on the left, up to ``data.max_new_tokens`` tokens.

``exact_match`` compares after normalising both texts: lower case, runs of
white space made one space, and white space and punctuation stripped from
both ends (``" Paris."`` matches ``"paris"``; inner punctuation counts).
``rouge_l`` is the F-measure of the longest common subsequence of the
normalised texts' words (ROUGE-L with beta 1).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch

PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(PUNCTUATION + " ")


def exact_match(predictions: list[str], references: list[str]) -> float:
    return float(np.mean([normalise(p) == normalise(r) for p, r in zip(predictions, references)])) if references else 0.0


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, 1):
            current = row[j]
            row[j] = previous + 1 if x == y else max(row[j], row[j - 1])
            previous = current
    return row[-1]


def rouge_l(predictions: list[str], references: list[str]) -> float:
    scores = []
    for prediction, reference in zip(predictions, references):
        p, r = normalise(prediction).split(), normalise(reference).split()
        common = _lcs(p, r)
        scores.append(0.0 if not common else 2 * common / (len(p) + len(r)))
    return float(np.mean(scores)) if scores else 0.0


@dataclass(frozen=True)
class Samples:
    """The validation rows a study decodes: prompt ids and the reference completions."""

    prompts: list[list[int]]
    references: list[str]
    pad_id: int
    eos_id: int | None
    max_new_tokens: int


@torch.no_grad()
def generate(model, samples: Samples, tokenizer_decode, device, batch_size: int, synced: bool = False) -> list[str]:
    """Greedy completions of the samples' prompts. ``synced``: the model is sharded across processes
    (FSDP), each decoding step is a collective, and a process whose rows all ended keeps stepping
    until every process's have (transformers' ``synced_gpus``, which it does not set for fully_shard)."""
    texts = []
    for start in range(0, len(samples.prompts), batch_size):
        chunk = samples.prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), samples.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, prompt in enumerate(chunk):  # left padding: every row's next token comes at the same place
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=samples.max_new_tokens,
                             do_sample=False, pad_token_id=samples.pad_id, eos_token_id=samples.eos_id,
                             synced_gpus=synced)
        texts += [tokenizer_decode(row[width:].tolist()) for row in out]
    return texts


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {"exact_match": exact_match(predictions, references), "rouge_l": rouge_l(predictions, references)}
