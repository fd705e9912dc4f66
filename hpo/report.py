"""A static report of a study: one ``index.html`` beside its PNG figures, to mail or publish.

The page needs no server, script or network: plain HTML with inline CSS and
relative image links, so the folder can be zipped, attached or served as is.
It never shows the storage URL (a shared report should not name the
database), and every text from the study is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any, Iterable

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpo import __version__
from hpo.errors import UserError
from hpo.fmt import cell, duration, format_params
from hpo.plots import Figure, draw_all
from hpo.records import RetrainRecord
from hpo.runner import Counts, ranked
from hpo.spec import StudySpec

TOP = 10

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; overflow-wrap: anywhere; }
th { background: #f4f4f4; vertical-align: bottom; overflow-wrap: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { max-width: 100%; overflow-x: auto; }  /* a table wider than the page scrolls by itself; the page does not */
table.top { font-size: 0.82rem; } table.top th { white-space: normal; } table.top th, table.top td { padding: 0.25rem 0.4rem; }
tr.best td { background: #eefbe9; font-weight: 600; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; } .skipped { color: #888; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
.facts td:first-child { color: #666; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: Iterable[list[Any]], classes: list[str] | None = None, css: str = "") -> str:
    head = "".join(f"<th>{_e(h).replace('_', '_<wbr>')}</th>" for h in headers)  # long knob names may break
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(
            f'<td class="num">{_e(cell(v))}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool) else f"<td>{_e(cell(v))}</td>"
            for v in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested test results as (dotted key, value) rows, whatever shape retrain gave them."""
    if isinstance(value, dict):
        rows = []
        for key, inner in value.items():
            rows += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list):
        return [(prefix, json.dumps(value))]
    return [(prefix, value)]


def _facts(spec: StudySpec, study: optuna.Study, counts: Counts) -> str:
    attrs = study.user_attrs
    data = spec.data
    where = f"{data.path}{'/' + data.name if data.name else ''}" if data.source == "hub" else data.source
    sizes = ", ".join(f"{attrs[k]:,} {k.split('_')[0]}" for k in ("train_examples", "validation_examples") if isinstance(attrs.get(k), int))
    rows = [
        ["model", spec.model],
        ["task", spec.task],
        ["data", where + (f" ({sizes})" if sizes else "")],
        ["metric", f"validation {spec.metric} ({spec.direction})"],
        ["budget", f"{spec.n_trials} finished trials"],
        ["trials", f"{counts.finished} finished: {counts.complete} complete, {counts.pruned} pruned; "
                   f"{counts.failed} failed, {counts.running} running, {counts.waiting} waiting"],
        ["sampler / pruner", f"{spec.sampler.type} / {spec.pruner.type}"],
    ]
    return '<table class="facts"><tbody>' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</tbody></table>"


def _best(spec: StudySpec, best: FrozenTrial | None) -> str:
    if best is None:
        return "<p>No trial has completed yet.</p>"
    where = best.user_attrs.get("best_examples")
    at = f" after {where:,} training examples (epoch {best.user_attrs.get('best_epoch')})" if isinstance(where, int) else ""
    params = {**best.params}
    return (
        f"<p>Trial <b>#{best.number}</b>: validation {_e(spec.metric)} <b>{best.value:.4f}</b>{_e(at)}.</p>"
        + _table(["parameter", "value"], [[k, v] for k, v in params.items()])
    )


def _top_trials(spec: StudySpec, study: optuna.Study) -> str:
    top = ranked(study)[:TOP]
    if not top:
        return "<p>No complete trials.</p>"
    searched = list(spec.searched)
    headers = ["rank", "#", spec.metric, *searched, "best at examples", "seconds", "examples /s", "trainable", "peak MB"]
    rows = []
    for rank, t in enumerate(top, 1):
        a = t.user_attrs
        fraction = a.get("trainable_fraction")
        rows.append([
            rank, t.number, t.value, *[t.params.get(k) for k in searched], a.get("best_examples"), a.get("wall_seconds"),
            a.get("examples_per_second"), f"{fraction:.1%}" if isinstance(fraction, (int, float)) else None, a.get("peak_memory_mb"),
        ])
    return _table(headers, rows, classes=["best"] + [""] * (len(rows) - 1), css="top")


def _figures(figures: list[Figure]) -> str:
    parts = []
    for f in figures:
        if f.path is not None:
            parts.append(
                f'<figure><h3>{_e(f.title)}</h3><img src="{_e(f.file)}" alt="{_e(f.title)}">'
                f"<figcaption>{_e(f.caption)}</figcaption></figure>"
            )
        else:
            parts.append(f'<p class="skipped"><b>{_e(f.title)}</b>: not drawn ({_e(f.skipped)})</p>')
    return "\n".join(parts)


def _test_results(study: optuna.Study) -> str:
    """The retrained winner's test scores, as ``hpo retrain`` records them (``retrain`` study attribute).

    Known fields get tables (mean and spread over seeds, each seed); where the
    model was saved and on which host stay out of a shared page. A record this
    hpo cannot read (another version's) is shown flattened rather than dropped.
    """
    raw = study.user_attrs.get("retrain")
    if not raw:
        return ""
    intro = "<h2>Test results</h2><p>The winner retrained and scored once on the held-out test split"
    try:
        record = RetrainRecord.read(raw, "study attribute 'retrain'")
    except UserError:
        return intro + ".</p>" + _table(["", "value"], [[k, v] for k, v in _flatten(raw)])
    test, metric = record.test, record.metric
    names = sorted(test.mean, key=lambda name: (name != metric, name))
    facts = (
        f" ({test.examples} examples): winner trial #{record.winner.trial}, retrained on "
        f"{record.trained_on.split} ({record.trained_on.examples} examples) with {len(record.seeds)} seeds"
    )
    means = _table(["metric", "test mean", "std over seeds"], [[n, test.mean[n], test.std.get(n)] for n in names])
    seeds = [[r.seed, r.test.get(metric), (r.validation or {}).get(metric), r.epochs, r.seconds] for r in record.seeds]
    per_seed = _table(["seed", f"test {metric}", f"validation {metric}", "epochs", "seconds"], seeds) if seeds else ""
    return intro + _e(facts) + ".</p>" + means + per_seed


def _failures(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return ""
    rows = [[t.number, t.user_attrs.get("fail_reason", "unknown"), format_params(t.params)] for t in failed]
    return "<h2>Failed trials</h2>" + _table(["#", "reason", "parameters"], rows)


def render(spec: StudySpec, study: optuna.Study, figures: list[Figure], now: dt.datetime) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counts.of(trials)
    top = ranked(study)
    spent = sum(float(t.user_attrs.get("wall_seconds") or 0) for t in trials)
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json", exclude={"storage"}), sort_keys=False)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(spec.name)}: hpo report</title><style>{CSS}</style></head>
<body>
<h1>{_e(spec.name)}</h1>
<p class="sub">hpo study report, {_e(now.strftime('%Y-%m-%d %H:%M'))}; {_e(duration(spent))} of trial time across workers.</p>
{_facts(spec, study, counts)}
<h2>Best trial</h2>
{_best(spec, top[0] if top else None)}
{_test_results(study)}
<h2>Top trials</h2>
{_top_trials(spec, study)}
<h2>Figures</h2>
{_figures(figures)}
{_failures(study)}
<h2>Study file</h2>
<p>As resolved by hpo (defaults filled in, storage left out).</p>
<pre>{_e(spec_yaml)}</pre>
<p class="sub">Made by hpo {_e(__version__)} with Optuna {_e(optuna.__version__)}.</p>
</body></html>
"""


def write_report(spec: StudySpec, study: optuna.Study, folder: Path) -> tuple[Path, list[Figure]]:
    folder.mkdir(parents=True, exist_ok=True)
    figures = draw_all(study, spec, folder)
    index = folder / "index.html"
    index.write_text(render(spec, study, figures, dt.datetime.now()), encoding="utf-8")
    return index, figures
