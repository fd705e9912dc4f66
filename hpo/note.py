"""What optuna-dashboard shows about a study beyond its trials: a note, and the metric's name.

optuna-dashboard shows a Markdown note on each study page (``save_note``).
``hpo launch`` writes one describing the study file and the meaning of the
numbers a trial records, so a person opening the dashboard cold can read it.
It is rewritten only when its text changes, so parallel workers and resumed
launches do not pile up versions.
"""

from __future__ import annotations

import optuna

from hpo.fmt import format_params
from hpo.spec import StudySpec


def note_text(spec: StudySpec) -> str:
    searched = ", ".join(spec.searched) or "nothing (every parameter is fixed)"
    data = spec.data
    if data.source == "hub":
        source = f"the hub dataset `{data.path}{'/' + data.name if data.name else ''}`"
    else:
        source = "the demo reviews" if data.source == "demo" else f"{data.source} files"
    fixed = format_params({k: v for k, v in spec.fixed_params.items() if k in spec.search_space})
    return "\n".join(
        [
            f"## {spec.name}",
            "",
            f"Fine-tuning `{spec.model}` for {spec.task} on {source}; "
            f"the value is validation **{spec.metric}** ({spec.direction}), the best point of each trial.",
            f"Budget: {spec.n_trials} finished trials across every worker. Sampler {spec.sampler.type}, pruner {spec.pruner.type}.",
            f"Searched: {searched}." + (f" Fixed: {fixed}." if fixed else ""),
            "",
            "- **Intermediate values** are validation scores after a number of *training examples seen* "
            f"({spec.evaluation.points_per_epoch} per epoch), so trials with different batch sizes line up.",
            "- **Trial user attributes**: `examples_per_second`, `wall_seconds`, `trainable_fraction`, "
            "`peak_memory_mb`, `device`, `precision` (bf16 autocast or fp32); `best_examples`/`best_epoch` (where the best score was reached); "
            "`examples_seen`/`examples_total` while a trial runs; `fail_reason` for failed trials.",
            "- **Study user attributes**: `spec` (the resolved study file, storage left out), the label mapping, "
            "data sizes; `retrain` holds the test results once the winner is retrained.",
            "",
            "_Written by `hpo launch`; edits here are replaced when the study is launched again._",
        ]
    )


def annotate(study: optuna.Study, spec: StudySpec) -> None:
    """The note, and the metric's name on the value axis instead of "Objective 0"."""
    import warnings

    from optuna_dashboard import get_note, save_note

    text = note_text(spec)
    if get_note(study) != text:
        save_note(study, text)
    if study.metric_names != [spec.metric]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])
