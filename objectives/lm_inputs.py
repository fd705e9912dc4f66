"""Language-model inputs: prompt/completion or chat rows into token ids with completion-only labels.

Every token gets a label; prompt, system and user tokens (and padding) get
``IGNORE``, so the loss is on what the model should write. A chat is rendered
with the tokenizer's own chat template, and the assistant spans are found by
rendering the conversation turn by turn: the tokens an assistant turn adds
to the rendering of what came before are its span. Rows over ``max_length``
keep their end (the prompt is cut from the left) or are dropped, as
``data.truncation`` says; both are counted in the data report.

The budget unit is the completion token: evaluation points and the pruner's
step are placed by completion tokens seen, so trials with other batch sizes,
or rows of other lengths, are compared after the same amount of supervised data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpo.spec import DataSpec
from objectives import compat
from objectives.batching import to_device
from objectives.errors import ObjectiveError
from objectives.generation import Samples
from objectives.heads import IGNORE
from objectives.tokens import _key, cached_map


def _leading_specials(tokenizer) -> list[int]:
    """The special tokens a tokenizer puts before a text (a BOS, or BERT's [CLS]), without those
    it puts after (BERT's [SEP]): a prompt is the start of a sequence, not a whole one."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    return full[:start]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return _leading_specials(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def _prompt_completion(row, tokenizer):
    prompt = prompt_ids(tokenizer, row["prompt"])
    completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]  # the model learns to stop
    return prompt + completion, [IGNORE] * len(prompt) + completion


def _render(tokenizer, turns, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=generation_prompt)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _messages(row, tokenizer):
    turns = row["messages"]
    ids = _render(tokenizer, turns, False)
    labels = [IGNORE] * len(ids)
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, turns[:i], True) if i else []
        through = _render(tokenizer, turns[: i + 1], False)
        if through[: len(before)] != before or ids[: len(through)] != through:
            raise ObjectiveError("data.format: the tokenizer's chat template does not render a conversation as the "
                                 "sum of its turns; use format prompt-completion")
        labels[len(before) : len(through)] = through[len(before) : len(through)]
    return ids, labels


def encode_row(row, tokenizer, data: DataSpec) -> tuple[list[int], list[int], int]:
    """(input ids, labels, status): status 0 fits, 1 truncated from the left (prompt cut), 2 dropped."""
    encode = _messages if data.format == "messages" else _prompt_completion
    ids, labels = encode(row, tokenizer)
    if len(ids) <= data.max_length:
        return ids, labels, 0
    if data.truncation == "drop":
        return [], [], 2
    scored = [i for i, label in enumerate(labels) if label != IGNORE]
    if scored and len(ids) - scored[0] > data.max_length:
        raise ObjectiveError(
            f"data.max_length: {data.max_length} tokens cannot hold a completion of {len(ids) - scored[0]} "
            "(data.truncation: prompt only cuts prompts); raise max_length, or use truncation: drop"
        )
    return ids[-data.max_length :], labels[-data.max_length :], 1


def samples(rows: list[dict], tokenizer, data: DataSpec) -> Samples:
    """What decoding starts from (the prompt, or the chat up to its last assistant turn) and the reference."""
    prompts, references = [], []
    for row in rows:
        if data.format == "messages":
            last = max(i for i, t in enumerate(row["messages"]) if t["role"] == "assistant")
            prompt = _render(tokenizer, row["messages"][:last], True)
            references.append(row["messages"][last]["content"])
        else:
            prompt = prompt_ids(tokenizer, row["prompt"])
            references.append(row["completion"])
        prompts.append(prompt[-max(1, data.max_length - data.max_new_tokens):])
    return Samples(prompts, references, tokenizer.pad_token_id, tokenizer.eos_token_id, data.max_new_tokens)


def check_template(tokenizer, data: DataSpec) -> None:
    if data.format == "messages" and not getattr(tokenizer, "chat_template", None):
        raise ObjectiveError("data.format: messages needs a tokenizer with a chat template, and this model's has none "
                             "(use format prompt-completion, or a model whose tokenizer has one)")


def encode(dataset, tokenizer, data: DataSpec):
    """The rows as ids and labels (cached on disk); dropped rows are kept empty, to be counted."""
    check_template(tokenizer, data)

    def one(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = [encode_row(row, tokenizer, data) for row in rows]
        return {"input_ids": [o[0] for o in out], "labels": [o[1] for o in out], "status": [o[2] for o in out]}

    key = _key(dataset, tokenizer, [data.format, data.max_length, data.truncation, data.key_columns, "lm-v1"])
    return cached_map(dataset, key, one)


def length_summary(lengths: np.ndarray) -> dict[str, float]:
    if not len(lengths):
        return {}
    return {"min": int(lengths.min()), "median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max())}


def pack(lengths: np.ndarray, max_length: int) -> list[list[int]]:
    """Examples into rows of at most ``max_length`` tokens: first fit, longest first (deterministic)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in np.argsort(-lengths, kind="stable"):
        size = int(lengths[index])
        slot = next((r for r, free in enumerate(room) if free >= size), None)
        if slot is None:
            rows.append([int(index)])
            room.append(max_length - size)
        else:
            rows[slot].append(int(index))
            room[slot] -= size
    return rows


class LanguageModelBatches:
    """Examples (or packed rows of several examples) batched with completion-only labels.

    Unpacked, each batch is padded to its longest row with an attention mask.
    Packed, a row holds several examples back to back with position ids that
    restart at each one and no attention mask, which transformers turns into
    attention kept within each example: the same loss as unpacked rows.
    """

    def __init__(self, ids: list[list[int]], labels: list[list[int]], pad_id: int, packing: bool, max_length: int):
        self.ids, self.label_ids, self.pad, self.packing, self.max_length = ids, labels, pad_id, packing, max_length
        sizes = np.asarray([len(i) for i in ids], dtype=np.int64)
        self.rows = pack(sizes, max_length) if packing else [[i] for i in range(len(ids))]
        self.lengths = np.asarray([int(sizes[r].sum()) for r in self.rows], dtype=np.int64)
        scored = np.asarray([sum(1 for t in lab[1:] if t != IGNORE) for lab in labels], dtype=np.int64)
        self.units = np.asarray([int(scored[r].sum()) for r in self.rows], dtype=np.int64)
        self.labels = np.zeros(len(self.rows), dtype=np.int64)  # no per-row label: the evaluator reads the tokens
        self.samples: Samples | None = None  # rows decoded for generation metrics (validation, test)
        self.decode = None

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def concat(cls, first: "LanguageModelBatches", second: "LanguageModelBatches") -> "LanguageModelBatches":
        """Train + validation as one training set (retraining), packed anew."""
        return cls(first.ids + second.ids, first.label_ids + second.label_ids, first.pad, first.packing, first.max_length)

    def batch(self, indices, device) -> dict:
        width = int(self.lengths[np.asarray(indices)].max())
        n = len(indices)
        ids = np.full((n, width), self.pad, dtype=np.int64)
        labels = np.full((n, width), IGNORE, dtype=np.int64)
        positions = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for b, row in enumerate(indices):
            start = 0
            for example in self.rows[int(row)]:
                size = len(self.ids[example])
                ids[b, start : start + size] = self.ids[example]
                labels[b, start : start + size] = self.label_ids[example]
                labels[b, start] = IGNORE  # never predict an example's first token from the one before it
                positions[b, start : start + size] = np.arange(size)
                start += size
            mask[b, :start] = 1
            positions[b, start:] = np.arange(width - start)  # padding: a sequence of its own, never scored
        out = {"input_ids": to_device(ids, device), "labels": to_device(labels, device)}
        if self.packing:
            out["position_ids"] = to_device(positions, device)
            out.update(compat.PACKED_FORWARD)
        else:
            out["attention_mask"] = to_device(mask, device)
        return out


def check_packing(model, batches: LanguageModelBatches) -> None:
    import torch

    row = next((r for r in batches.rows if len(r) >= 2), None)
    if row is None:
        return  # nothing is packed with another example
    first, second = (batches.ids[i][:16] for i in row[:2])
    device = next(model.parameters()).device
    ids = torch.tensor([first + second], device=device)
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second], device=device)).logits[0].float()
        packed = model(input_ids=ids, position_ids=positions, **compat.PACKED_FORWARD).logits[0, len(first):].float()
    if not torch.allclose(alone, packed, rtol=1e-3, atol=1e-3):
        raise ObjectiveError(f"data.packing: {type(model).__name__} lets packed examples attend to each other "
                             "(it does not restart at position ids); set packing: false")


@dataclass(frozen=True)
class LanguageModelInputs:
    unit: str = "tokens"  # the budget: completion tokens seen

    def auto_model(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def preprocessor(self, path: str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked and never scored
        return tokenizer

    def batches(self, dataset, preprocessor, data: DataSpec, *, training: bool) -> LanguageModelBatches:
        encoded = encode(dataset, preprocessor, data)
        status = np.asarray(encoded["status"])
        kept = [i for i, s in enumerate(status) if s != 2]
        ids, labels = encoded["input_ids"], encoded["labels"]
        batches = LanguageModelBatches([ids[i] for i in kept], [labels[i] for i in kept], preprocessor.pad_token_id,
                                       data.packing, data.max_length)
        if not training and data.max_generation_samples:
            rows = [dataset[i] for i in kept[: data.max_generation_samples]]
            batches.samples = samples(rows, preprocessor, data)
            batches.decode = lambda tokens: preprocessor.decode(tokens, skip_special_tokens=True)
        return batches

    def check(self, model, batches: LanguageModelBatches) -> None:
        """Packed rows must score as the examples would alone: some architectures ignore position ids
        (or build their own mask) and would let packed examples attend to each other."""
        if batches.packing:
            check_packing(model, batches)

    def annotate(self, report, split: str, dataset, preprocessor, data: DataSpec) -> None:
        """Token lengths of the split's rows, and rows over max_length (truncated or dropped), in the report."""
        encoded = encode(dataset, preprocessor, data)
        status = np.asarray(encoded["status"])
        lengths = np.asarray([len(i) for i in encoded["input_ids"]])
        counts = report.split(split)
        counts.too_long = int((status != 0).sum())
        counts.labels = length_summary(lengths[status != 2])
        dropped = int((status == 2).sum())
        counts.used -= dropped
        report.language_model = True
        if counts.too_long:
            how = "dropped (data.truncation: drop)" if data.truncation == "drop" else "prompt cut from the left (data.truncation: prompt)"
            report.notes.append(f"{counts.too_long} {split} rows over max_length {data.max_length}: {how}")
