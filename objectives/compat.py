"""The PEFT and transformers internals hpo relies on, in one place.

Everything here is behaviour the libraries do not promise: where PEFT keeps
the trainable copy of a module named in ``modules_to_save``, that ``unload``
puts that trained copy (not the original) back into the base, and the
``_init_weights`` hook transformers models use to initialise a head.
``tests/test_compat.py`` checks each against the installed versions, so an
upgrade that changes them fails there, by name, instead of corrupting the
base model a worker shares between trials.
"""

from __future__ import annotations

from torch import nn

# transformers keeps packed examples apart (attention within each, from position ids that
# restart) only when there is no attention mask and no cache; a forward builds a cache
# unless told not to, and then the examples of a packed row attend to each other.
PACKED_FORWARD = {"use_cache": False}


def init_module(model: nn.Module, module: nn.Module) -> None:
    """Initialise ``module`` as ``model`` initialises a freshly created head."""
    model._init_weights(module)


def trainable_copy(peft_model, name: str) -> nn.Module:
    """The copy of module ``name`` that a LoRA model trains (``modules_to_save``)."""
    wrapper = peft_model.base_model.model.get_submodule(name)
    return wrapper.modules_to_save[peft_model.active_adapter]


def unload(peft_model, originals: dict[str, nn.Module]) -> nn.Module:
    """Remove every adapter and put the base's own modules back where ``modules_to_save`` wrapped them.

    PEFT's ``unload`` leaves the trained copy of such a module in the base;
    hpo shares one base between trials, so the original goes back in.
    """
    base = peft_model.unload()
    for name, module in originals.items():
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, module)
    return base


def to_device(model: nn.Module, device) -> nn.Module:
    """``model.to(device)``, except for a bitsandbytes-quantized base (QLoRA), which transformers
    placed on its GPU when loading and refuses to move."""
    base = getattr(getattr(model, "base_model", None), "model", model)
    if getattr(base, "hf_quantizer", None) is not None or getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        return model
    return model.to(device)

