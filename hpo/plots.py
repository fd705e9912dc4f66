"""The report's figures, as PNG files drawn with matplotlib, no browser or network needed.

Optuna's ``visualization.matplotlib`` draws the history, importances,
parallel coordinates and slices. Learning curves are drawn here because
Optuna's intermediate-value plot does not tell pruned trials from complete
ones, which is the point of looking at them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from hpo.spec import StudySpec

log = logging.getLogger("hpo.plots")


@dataclass(frozen=True)
class Figure:
    file: str  # PNG file name in the report folder
    title: str
    caption: str
    path: Path | None = None  # None: could not be drawn
    skipped: str | None = None  # why not


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no browser
    import matplotlib.pyplot as plt

    return plt


def _first_axes(drawn):
    """Optuna returns an Axes, or an array of them for several subplots."""
    return drawn.flat[0] if hasattr(drawn, "flat") else drawn


def _integer_x(axes):
    """Layer counts are whole numbers: no 0.2-layer ticks."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def learning_curves(study: optuna.Study, spec: StudySpec):
    """Validation score against training examples seen; pruned trials dashed and crossed where they stopped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    best = _best_number(study)
    drawn = {"complete": False, "pruned": False}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        if trial.state == TrialState.PRUNED:
            label = None if drawn["pruned"] else "pruned"
            ax.plot(steps, values, linestyle="--", color="#d62728", alpha=0.6, linewidth=1, label=label)
            ax.plot(steps[-1:], values[-1:], marker="x", color="#d62728", markersize=8, linestyle="none")
            drawn["pruned"] = True
        elif trial.number == best:
            ax.plot(steps, values, color="#2ca02c", linewidth=2.5, marker="o", markersize=4, label=f"best (#{trial.number})", zorder=3)
        else:
            label = None if drawn["complete"] else "complete"
            ax.plot(steps, values, color="#1f77b4", alpha=0.55, linewidth=1.2, marker=".", label=label)
            drawn["complete"] = True
    if not ax.lines:
        plt.close(fig)
        raise ValueError("no trial reported an intermediate value yet")
    ax.set_xlabel("completion tokens seen" if spec.budget_unit == "tokens" else "training examples seen")
    ax.set_ylabel(f"validation {spec.pruning_metric}")
    ax.set_title("Learning curves")
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    return ax


def _best_number(study: optuna.Study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:
        return None


def _seconds(trial: optuna.trial.FrozenTrial) -> float:
    return float(trial.user_attrs.get("wall_seconds") or float("nan"))


def _curves_caption(spec: StudySpec) -> str:
    """Says what the curves plot: what trials report (the pruner's metric), which may not be what ranks them."""
    reported = spec.pruning_metric
    ranked = "" if reported == spec.metric else (
        f" (what trials report and the pruner judges; trials are ranked by validation {spec.metric})")
    return (f"Validation {reported}{ranked} against training examples seen, so batch sizes line up. "
            "Pruned trials are dashed, with a cross where the pruner stopped them.")


def figures(spec: StudySpec) -> list[tuple[str, str, str, Callable[[optuna.Study], object]]]:
    """(file, title, caption, draw) for every figure the report wants."""
    from optuna.visualization import matplotlib as ovm

    metric = spec.metric
    searched = list(spec.searched)
    items = [
        ("history.png", "Optimization history", f"Each complete trial's {metric} and the best so far, by trial number.",
         lambda s: ovm.plot_optimization_history(s, target_name=metric)),
        ("learning_curves.png", "Learning curves", _curves_caption(spec), lambda s: learning_curves(s, spec)),
        ("importances.png", "Parameter importances", f"How much of the variation in {metric} each parameter explains (Optuna's default evaluator).",
         lambda s: ovm.plot_param_importances(s, params=searched or None, target_name=metric)),
        ("parallel_coordinates.png", "Parallel coordinates", f"Every complete trial's parameters, coloured by {metric}.",
         lambda s: ovm.plot_parallel_coordinate(s, params=searched or None, target_name=metric)),
    ]
    if "freeze_depth" in spec.searched:
        items += [
            ("freeze_depth_metric.png", f"{metric} against freeze_depth",
             f"Validation {metric} of complete trials by the number of bottom layers kept frozen.",
             lambda s: _integer_x(ovm.plot_slice(s, params=["freeze_depth"], target_name=metric))),
            ("freeze_depth_seconds.png", "Trial time against freeze_depth",
             "Wall seconds of complete trials (training and evaluation) by the number of frozen layers; "
             "frozen layers skip their backward pass.",
             lambda s: _integer_x(ovm.plot_slice(s, params=["freeze_depth"], target=_seconds, target_name="trial seconds"))),
        ]
    return items


def retitle(axes, title: str) -> None:
    """Our title in place of Optuna's, which are generic ("Slice Plot") and sometimes on the left, where
    setting the usual (centre) title would leave both ("Hyperparameter Importances" over ours)."""
    for loc in ("left", "right"):
        axes.set_title("", loc=loc)
    axes.set_title(title)


def draw_all(study: optuna.Study, spec: StudySpec, folder: Path) -> list[Figure]:
    """Draw every figure it can; a figure that cannot be drawn (too few trials) is listed with its reason."""
    plt = _pyplot()
    done = []
    for file, title, caption, draw in figures(spec):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" notes and empty-plot warnings
                axes = _first_axes(draw(study))
            retitle(axes, title)
            fig = axes.figure
            fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 4.8))
            path = folder / file
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            done.append(Figure(file, title, caption, path=path))
        except Exception as exc:  # noqa: BLE001 - one figure that cannot be drawn must not sink the report
            plt.close("all")
            log.debug("figure %s not drawn", file, exc_info=True)
            done.append(Figure(file, title, caption, skipped=f"{type(exc).__name__}: {exc}"))
    if "freeze_depth" not in spec.searched:
        value = spec.search_space.get("freeze_depth")
        done.append(Figure("freeze_depth", "freeze_depth", "", skipped=f"freeze_depth was not searched (fixed at {value})"))
    return done
