"""The best trial's own trained weights as a model folder: ``hpo export --from-checkpoint``.

With ``checkpoints.keep: best`` the search keeps the trainable weights of its
best trial at the end of training. Writing them out needs the frozen base they
were trained on: it is loaded as the search loaded it, the trial's model (a
copy, or the base with a fresh adapter) is built with the same parameters and
seed, and the kept weights are loaded into it; the result saves as
``hpo retrain`` saves its model (a full model, or the adapter with its head).
"""

from __future__ import annotations

from pathlib import Path

from hpo.errors import UserError
from hpo.params import TrainingParams
from hpo.spec import StudySpec


def save_kept(spec: StudySpec, label_names: list[str], params: TrainingParams, payload: bytes, out_dir: Path) -> None:
    from objectives import adapters, loop_state, task_for
    from objectives.model import LoadOptions, load_pretrained

    pretrained = load_pretrained(spec.model, task_for(spec.task), label_names,
                                 LoadOptions(quantize=spec.adapter.quantize))
    models = adapters.build(spec.adapter.type, pretrained)
    model = models.attach(params, spec.seed)
    try:
        state = loop_state.from_bytes(payload)
        loop_state.check_fits(state, model)
    except loop_state.StateMismatch as exc:
        raise UserError(f"--from-checkpoint: the kept state does not fit {spec.model}: {exc}") from None
    loop_state.load_weights(model, state["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    models.save(model, out_dir)
    pretrained.tokenizer.save_pretrained(out_dir)
