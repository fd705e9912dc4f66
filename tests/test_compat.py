"""The library internals hpo relies on, checked against the installed versions.

``objectives/compat.py`` is the one place that touches PEFT and transformers
behaviour they do not promise; each test here names one such behaviour, so
an upgrade that changes it fails here, by name, before it can corrupt the
base model a worker shares between trials.
"""

from __future__ import annotations

import pytest
import torch

from objectives import compat


@pytest.fixture
def base():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2)
    return BertForSequenceClassification(config)


def _lora(base):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["bert.encoder.layer.0.attention.self.query"], modules_to_save=["classifier"])
    return get_peft_model(base, config)


def test_peft_keeps_a_trainable_copy_of_modules_to_save_and_unload_puts_that_copy_in(base):
    """What compat.unload corrects: PEFT's unload leaves the trained copy, not the original."""
    original = base.classifier
    model = _lora(base)
    copy = compat.trainable_copy(model, "classifier")
    assert copy is not original and all(p.requires_grad for p in copy.parameters())
    assert not any(p.requires_grad for p in original.parameters()), "PEFT freezes the original"
    unloaded = model.unload()
    assert unloaded.classifier is copy, "PEFT's unload no longer leaves the trained copy: compat.unload may be simplified"


def test_compat_unload_restores_the_original_modules_and_weights(base):
    original = base.classifier
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = _lora(base)
    with torch.no_grad():
        compat.trainable_copy(model, "classifier").weight.add_(1.0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(1.0)
    restored = compat.unload(model, {"classifier": original})
    assert restored is base and restored.classifier is original
    assert set(restored.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in restored.state_dict().items())
    assert not hasattr(restored, "peft_config"), "a second get_peft_model on the base starts clean"


def test_transformers_models_initialise_a_head_with_init_weights(base):
    head = torch.nn.Linear(16, 2)
    torch.nn.init.constant_(head.weight, 5.0)
    compat.init_module(base, head)
    assert not torch.all(head.weight == 5.0) and torch.all(head.bias == 0)
