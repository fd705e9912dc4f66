"""From the search's winner to a tested model: choose it, retrain it per seed, test it once, record it.

The search side decides; the objective it is handed does the model work and
is never imported here. The choice (the best trial, or with ``top_k`` the
best mean over seeds on the validation split) is complete before anything is
evaluated on the test split, so test results cannot feed back into it. The
outcome is one study user attribute, ``retrain`` (a typed, versioned
``hpo.records.RetrainRecord``), replaced as a whole: rerunning with the same
settings finds it and adds nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import socket
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial

from hpo import atomic
from hpo.errors import UserError
from hpo.fmt import format_params, table
from hpo.params import TrainingParams
from hpo.records import (
    CandidateResult, HeldOutScores, KeptModel, RetrainedSeed, RetrainPlan, RetrainRecord, SeedRun, TrainedOn,
    TrialRecord, Winner,
)
from hpo.runner import ranked
from hpo.spec import RetrainSpec, StudySpec

log = logging.getLogger("hpo.retrain")

RECORD = "retrain"  # study user attribute with the whole outcome
SUMMARY = "retrain_summary"  # one readable line for the dashboard's attribute list
RUN_FILE = "hpo_run.json"  # beside the weights: which retrain wrote them


class Retrainable(Protocol):
    """What retrain needs from an objective (``objectives.text_classification`` provides it)."""

    def load_test(self) -> int: ...

    def validation_run(self, params: TrainingParams, seed: int) -> Any: ...  # best point: .metrics, .epoch

    def retrain(self, params: TrainingParams, seed: int, *, on: str, epochs: float, directory: Path) -> Any: ...


@dataclass(frozen=True)
class Run:
    """One validation score of a configuration."""

    seed: int
    value: float
    best_epoch: float | None
    from_search: bool  # the trial itself, run with the study seed


@dataclass
class Candidate:
    trial: FrozenTrial
    runs: list[Run]

    @property
    def mean(self) -> float:
        return statistics.fmean(r.value for r in self.runs)

    @property
    def std(self) -> float:
        return statistics.stdev(r.value for r in self.runs) if len(self.runs) > 1 else 0.0

    @property
    def best_epoch(self) -> float | None:
        """Where the configuration peaked on validation, averaged over its runs."""
        epochs = [r.best_epoch for r in self.runs if r.best_epoch is not None]
        return round(statistics.fmean(epochs), 4) if epochs else None


@dataclass(frozen=True)
class Plan:
    """What a retrain will do. The same plan twice means the recorded result still stands."""

    settings: RetrainSpec
    study_seed: int
    candidates: list[FrozenTrial]  # the best complete trials, best first
    home: Path  # <output_dir>/<study name>; the kept model goes to home/model

    def key(self) -> RetrainPlan:
        return RetrainPlan(
            top_k=self.settings.top_k,
            seeds=list(self.settings.seeds),
            train_on=self.settings.train_on,
            study_seed=self.study_seed,
            candidates=[t.number for t in self.candidates],
            home=str(self.home),
        )


def params_of(spec: StudySpec, trial: FrozenTrial) -> TrainingParams:
    return TrainingParams.from_values({**spec.fixed_params, **trial.params})


def ranked_trials(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    """Complete trials, best first (ties: the earlier trial); a clear error when there are none."""
    complete = ranked(study)
    if not complete:
        raise UserError(f"study {spec.name!r} has no completed trial yet; run `hpo launch` until one completes")
    return complete


def model_home(spec: StudySpec) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name).strip("._") or "study"
    return Path(spec.retrain.output_dir).resolve() / safe


def make_plan(study: optuna.Study, spec: StudySpec) -> Plan:
    ranked = ranked_trials(study, spec)
    return Plan(spec.retrain, spec.seed, ranked[: spec.retrain.top_k], model_home(spec))


def recorded(study: optuna.Study) -> RetrainRecord | None:
    """The study's retrain record, checked; a one-line ``UserError`` when this hpo cannot read it."""
    return RetrainRecord.of(study, RECORD)


def model_is_present(record: RetrainRecord) -> bool:
    """The recorded model is on this machine and was written by that very retrain."""
    try:
        written = json.loads((Path(record.model.path) / RUN_FILE).read_text())
    except (OSError, ValueError, AttributeError):
        return False
    return written.get("run_id") == record.run_id


def still_valid(study: optuna.Study, plan: Plan) -> RetrainRecord | None:
    record = recorded(study)
    if record and record.plan == plan.key() and model_is_present(record):
        return record
    return None


# --- choosing ----------------------------------------------------------------


def pick(candidates: list[Candidate], maximize: bool) -> Candidate:
    """The best mean; on a tie, the candidate the search ranked higher."""
    chooser = max if maximize else min
    return chooser(candidates, key=lambda c: c.mean)


def closest_to_mean(results: list[Any], metric: str) -> Any:
    """The seed whose test score is nearest the mean: the model most typical of the configuration."""
    mean = statistics.fmean(r.test[metric] for r in results)
    return min(results, key=lambda r: abs(r.test[metric] - mean))


def _searched_run(spec: StudySpec, trial: FrozenTrial) -> Run:
    measured = TrialRecord.of(trial)
    return Run(spec.seed, float(trial.value), measured.best_epoch if measured else None, True)


def _reevaluate(spec: StudySpec, plan: Plan, objective: Retrainable) -> list[Candidate]:
    """Each top-k configuration on every extra seed; the trial itself counts as the study seed's run."""
    extra = [s for s in plan.settings.seeds if s != spec.seed]
    total, done = len(plan.candidates) * len(extra), 0
    candidates = []
    for trial in plan.candidates:
        runs = [_searched_run(spec, trial)]
        for seed in extra:
            done += 1
            log.info("top-%d re-evaluation, run %d of %d: trial #%d with seed %d", len(plan.candidates), done, total, trial.number, seed)
            point = objective.validation_run(params_of(spec, trial), seed)
            runs.append(Run(seed, float(point.metrics[spec.metric]), point.epoch, False))
            log.info("trial #%d, seed %d: %s %.4f on validation", trial.number, seed, spec.metric, runs[-1].value)
        candidates.append(Candidate(trial, runs))
    return candidates


def choose(spec: StudySpec, plan: Plan, objective: Retrainable) -> tuple[Candidate, list[Candidate]]:
    if len(plan.candidates) > 1:
        candidates = _reevaluate(spec, plan, objective)
    else:
        candidates = [Candidate(plan.candidates[0], [_searched_run(spec, plan.candidates[0])])]
    return pick(candidates, spec.direction == "maximize"), candidates


# --- retraining ----------------------------------------------------------------


def _retrain_seeds(spec: StudySpec, params: TrainingParams, epochs: float, staging: Path, objective) -> list[Any]:
    seeds = spec.retrain.seeds
    results = []
    for i, seed in enumerate(seeds, 1):
        log.info("retraining seed %d (%d of %d) on %s", seed, i, len(seeds), spec.retrain.train_on)
        result = objective.retrain(params, seed, on=spec.retrain.train_on, epochs=epochs, directory=staging / f"seed-{seed}")
        log.info("seed %d: %s %.4f on test (%.0fs)", seed, spec.metric, result.test[spec.metric], result.seconds)
        results.append(result)
    return results


def _install_model(chosen: Any, staging: Path, home: Path, run_id: str, winner: int) -> Path:
    source = staging / f"seed-{chosen.seed}"
    (source / RUN_FILE).write_text(json.dumps({"run_id": run_id, "trial": winner, "seed": chosen.seed}))
    atomic.replace_dir(source, home / "model")
    return home / "model"


def run(spec: StudySpec, study: optuna.Study, plan: Plan, objective: Retrainable) -> RetrainRecord:
    """Choose, retrain every seed, test, keep one model, record; returns the record."""
    started = time.monotonic()
    test_examples = objective.load_test()
    log.info("test split: %d examples, read for the first time (scored only after the winner is chosen)", test_examples)
    winner, candidates = choose(spec, plan, objective)
    params = params_of(spec, winner.trial)
    epochs = winner.best_epoch or float(params.epochs)
    log.info("winner: trial #%d (%s %.4f on validation); %s", winner.trial.number, spec.metric, winner.mean, format_params(winner.trial.params))
    plan.home.mkdir(parents=True, exist_ok=True)
    staging = Path(atomic.staging_dir(plan.home / "model"))
    run_id = uuid.uuid4().hex
    try:
        results = _retrain_seeds(spec, params, epochs, staging, objective)
        chosen = closest_to_mean(results, spec.metric)
        path = _install_model(chosen, staging, plan.home, run_id, winner.trial.number)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = _record(spec, plan, run_id, winner, candidates, params, epochs, results, chosen, path, test_examples,
                     wall_seconds=round(time.monotonic() - started, 1))
    study.set_user_attr(RECORD, record.dump())  # the storage retries through short database outages
    study.set_user_attr(SUMMARY, summary(record))
    return record


# --- the record and how it reads -------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _candidate_record(c: Candidate) -> CandidateResult:
    return CandidateResult(
        trial=c.trial.number,
        params=c.trial.params,
        search_value=c.trial.value,
        runs=[SeedRun(seed=r.seed, value=r.value, best_epoch=r.best_epoch, from_search=r.from_search) for r in c.runs],
        mean=c.mean,
        std=c.std,
    )


def _record(spec, plan, run_id, winner, candidates, params, epochs, results, chosen, path, test_examples, *, wall_seconds) -> RetrainRecord:
    names = sorted(results[0].test)
    aggregated = {name: _mean_std([r.test[name] for r in results]) for name in names}
    return RetrainRecord(
        run_id=run_id,
        plan=plan.key(),
        metric=spec.metric,
        winner=Winner(
            trial=winner.trial.number,
            params=winner.trial.params,
            training_params=params.as_dict(),
            search_value=winner.trial.value,
            validation_mean=winner.mean,
            validation_std=winner.std,
            best_epoch=epochs,
        ),
        selection=[_candidate_record(c) for c in candidates],
        trained_on=TrainedOn(split=spec.retrain.train_on, examples=results[0].train_examples),
        seeds=[
            RetrainedSeed(seed=r.seed, test=r.test, validation=r.validation, examples_seen=r.examples_seen,
                          epochs=r.epochs, seconds=r.seconds)
            for r in results
        ],
        test=HeldOutScores(
            examples=test_examples,
            mean={name: m for name, (m, _) in aggregated.items()},
            std={name: s for name, (_, s) in aggregated.items()},
        ),
        model=KeptModel(seed=chosen.seed, path=str(path), host=socket.gethostname()),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        wall_seconds=wall_seconds,
    )


def shown_metrics(metric: str, available: Any = ()) -> list[str]:
    """The study's metric, then accuracy and macro-F1 where the task has them (classification)."""
    return [m for m in dict.fromkeys([metric, "accuracy", "f1"]) if m == metric or m in available]


def summary(record: RetrainRecord) -> str:
    metric, test = record.metric, record.test
    return (
        f"{metric} {test.mean[metric]:.4f} ± {test.std[metric]:.4f} on test "
        f"({len(record.seeds)} seeds, trained on {record.trained_on.split}); "
        f"winner trial #{record.winner.trial}"
    )


def _selection_table(record: RetrainRecord) -> str:
    seeds = list(dict.fromkeys(r.seed for c in record.selection for r in c.runs))
    rows = []
    for c in record.selection:
        values = {r.seed: r.value for r in c.runs}
        mark = "*" if c.trial == record.winner.trial else ""
        rows.append([f"{mark}#{c.trial}", c.search_value, *[values.get(s) for s in seeds], c.mean, c.std])
    return table(["trial", "search", *[f"seed {s}" for s in seeds], "mean", "std"], rows)


def _test_table(record: RetrainRecord) -> str:
    names = shown_metrics(record.metric, record.test.mean)
    rows = [[s.seed, *[s.test[n] for n in names], s.epochs] for s in record.seeds]
    rows.append(["mean", *[record.test.mean[n] for n in names], None])
    rows.append(["std", *[record.test.std[n] for n in names], None])
    return table(["seed", *names, "epochs"], rows)


def report(record: RetrainRecord) -> str:
    """The tables ``hpo retrain`` prints: the choice, then the test results per seed and aggregated."""
    winner, metric = record.winner, record.metric
    lines = []
    if len(record.selection) > 1:
        lines += [f"validation {metric} of the top {len(record.selection)} trials by seed (* = best mean, the winner):",
                  _selection_table(record), ""]
    lines += [
        f"winner   trial #{winner.trial}: {format_params(winner.params)}",
        f"trained  on {record.trained_on.split} ({record.trained_on.examples} examples), "
        f"{len(record.seeds)} seeds; tested once on {record.test.examples} test examples",
        "",
        "test results (std is the sample standard deviation over seeds):",
        _test_table(record),
        "",
        f"model    {record.model.path} (seed {record.model.seed}, closest to the mean {metric})",
    ]
    return "\n".join(lines)


def status_lines(record: RetrainRecord | None) -> list[str]:
    """What ``hpo status`` adds once the study was retrained."""
    if not record:
        return []
    metric, test = record.metric, record.test
    chosen = (f"best mean over {len(record.selection[0].runs)} seeds of the top {len(record.selection)}"
              if len(record.selection) > 1 else "best trial")
    scores = ", ".join(f"{n} {test.mean[n]:.4f} ± {test.std[n]:.4f}" for n in shown_metrics(metric, test.mean))
    per_seed = " ".join(f"{s.seed}:{s.test[metric]:.4f}" for s in record.seeds)
    return [
        f"retrain winner #{record.winner.trial} ({chosen}), trained on {record.trained_on.split}, "
        f"{record.finished_at}",
        f"test    {scores} ({len(record.seeds)} seeds, {test.examples} examples; {metric} by seed {per_seed})",
        f"model   {record.model.path} (seed {record.model.seed})",
    ]
