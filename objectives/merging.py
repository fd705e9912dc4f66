"""An adapter folded into its base: a full model that loads with the Auto classes, without PEFT.

Called by ``hpo export --merge`` on the adapter ``hpo retrain`` saved: the
base is loaded as the search loaded it (same head configuration and labels),
the adapter and its head are applied, and ``merge_and_unload`` writes their
sum into the base's weights.
"""

from __future__ import annotations

from pathlib import Path

from hpo.spec import StudySpec


def merge_adapter(spec: StudySpec, label_names: list[str], adapter_dir: Path, out_dir: Path) -> None:
    from peft import PeftModel

    from objectives import task_for
    from objectives.model import load_pretrained

    pretrained = load_pretrained(spec.model, task_for(spec.task), label_names)
    merged = PeftModel.from_pretrained(pretrained.model, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    pretrained.tokenizer.save_pretrained(out_dir)
