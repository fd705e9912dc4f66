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


def test_transformers_keeps_packed_examples_apart_given_restarting_positions_and_no_cache():
    """What packing relies on (objectives.lm_inputs): two examples in one row score as they do alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    first, second = torch.randint(1, 50, (1, 7)), torch.randint(1, 50, (1, 5))
    positions = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
    with torch.no_grad():
        alone = model(input_ids=second).logits
        packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions, **compat.PACKED_FORWARD).logits
    torch.testing.assert_close(packed[0, 7:], alone[0], rtol=1e-5, atol=1e-5)


def test_fully_shard_on_a_view_replaces_the_views_parameters_and_leaves_the_base_as_it_was(base):
    """What objectives.sharding.view relies on (LoRA under runtime.strategy fsdp): FSDP2's fully_shard
    copies each shard into storage of its own and swaps the view's parameters for it, so sharding and
    training the view (one gloo process here) changes no parameter, value or class of the shared base."""
    import torch.distributed as dist

    from objectives import sharding
    from objectives.runtime import Runtime

    parameters = dict(base.named_parameters())
    before = {name: value.clone() for name, value in base.state_dict().items()}
    classes = [type(module) for module in base.modules()]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        view = sharding.view(base)
        assert all(p.data_ptr() == parameters[name].data_ptr() for name, p in view.named_parameters()), "no weight copied"
        sharding.shard(view, Runtime(torch.device("cpu"), None, world=1, strategy="fsdp"))
        assert type(view.bert.encoder.layer[0]).__name__.startswith("FSDP")
        optimizer = torch.optim.SGD(view.parameters(), lr=1.0)
        view(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([1])).loss.backward()
        sharding.clip_grad_norm([p for p in view.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        assert not torch.equal(view.classifier.weight.full_tensor(), before["classifier.weight"]), "the view trained"
    finally:
        dist.destroy_process_group()
        sharding._mesh.cache_clear()
    assert all(p is parameters[name] for name, p in base.named_parameters())
    assert all(torch.equal(before[name], value) for name, value in base.state_dict().items())
    assert [type(module) for module in base.modules()] == classes
