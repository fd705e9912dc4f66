"""``hpo dashboard``: the real optuna-dashboard on a study made by a real launch, read-only when asked."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from conftest import hpo
from hpo import optuna_compat as compat
from dashboard_process import base, dashboard, request

pytestmark = pytest.mark.slow


def _study(launched) -> optuna.Study:
    return optuna.load_study(study_name=launched.name, storage=launched.storage)


def test_dashboard_serves_the_launched_study(launched_study):
    study = _study(launched_study)
    with dashboard(launched_study.path, cwd=launched_study.folder) as (url, process, lines):
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/dashboard/studies/{compat.study_id(study)}")
        assert "read-only" not in lines[0]  # loopback: the user's own machine may edit
        status, listing = request(base(url) + "/api/studies")
        assert status == 200
        names = {s["study_name"]: s for s in listing["study_summaries"]}
        assert launched_study.name in names
        status, detail = request(base(url) + f"/api/studies/{compat.study_id(study)}")
        assert status == 200
        assert detail["name"] == launched_study.name
        assert len(detail["trials"]) == len(study.trials) == 4
        # What hpo launch stores makes the dashboard useful: learning curves, trial facts, a note.
        assert detail["has_intermediate_values"]
        assert {"examples_per_second", "wall_seconds", "trainable_fraction", "best_examples"} <= {a["key"] for a in detail["union_user_attrs"]}
        assert "training examples seen" in detail["note"]["body"]
        assert detail["objective_names"] == ["accuracy"]
        page_status, page = request(url)
        assert page_status == 200 and "<html" in page.lower()


def test_beyond_loopback_warns_and_refuses_every_change(launched_study):
    """Bound to every interface, the dashboard is read-only unless asked otherwise; pages still work."""
    study = _study(launched_study)
    trial_id = compat.trial_id(study.trials[0])
    with dashboard(launched_study.path, "--host", "0.0.0.0", cwd=launched_study.folder) as (url, process, lines):
        assert "(read-only)" in lines[0]
        root = "http://127.0.0.1:" + base(url).rsplit(":", 1)[1]
        for method, path, body in [
            ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
            ("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {"x": 1}}),
            ("PUT", f"/api/studies/{compat.study_id(study)}/note", {"version": 99, "body": "changed"}),
            ("DELETE", f"/api/studies/{compat.study_id(study)}", None),
            ("POST", "/api/studies", {"study_name": "intruder", "directions": ["minimize"]}),
        ]:
            status, answer = request(root + path, method, body)
            assert status == 403, (method, path, answer)
            assert "read-only" in answer["reason"]
        assert request(root + f"/api/studies/{compat.study_id(study)}")[0] == 200  # reading still works
        assert request(root + "/dashboard")[0] == 200
        process.terminate()
        process.wait(timeout=20)
        assert "has no login" in process.stderr.read()
    after = _study(launched_study)
    assert [(t.state, t.user_attrs) for t in after.trials] == [(t.state, t.user_attrs) for t in study.trials]
    assert optuna.study.get_all_study_names(launched_study.storage) == [launched_study.name]


def test_storage_password_is_masked_and_never_on_a_command_line(launched_study, postgres_url, tmp_path):
    """A PostgreSQL URL with a password comes through the environment; it shows up nowhere."""
    name = f"{launched_study.name}-pg-{tmp_path.name[-8:]}"
    secret_url = postgres_url.replace("postgres@", "postgres:s3cr3t-pw@")
    optuna.copy_study(from_study_name=launched_study.name, from_storage=launched_study.storage, to_storage=postgres_url, to_study_name=name)
    study_file = tmp_path / "pg.yaml"
    study_file.write_text(launched_study.path.read_text().replace("name: watched-study", f"name: {name}"))
    try:
        with dashboard(study_file, env={"HPO_STORAGE": secret_url}, cwd=tmp_path) as (url, process, lines):
            assert "s3cr3t-pw" not in "\n".join(lines) and "***" in lines[0]
            assert b"s3cr3t-pw" not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
            status, listing = request(base(url) + "/api/studies")
            assert status == 200 and name in {s["study_name"] for s in listing["study_summaries"]}
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)


def test_dashboard_of_a_study_never_launched_is_a_clear_error(make_study, tmp_path):
    path = make_study(name="never-launched")
    result = hpo("dashboard", str(path), "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("hpo: error: no study named 'never-launched'") and "Traceback" not in result.stderr
