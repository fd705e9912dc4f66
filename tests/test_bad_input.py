"""Every user mistake: exit code 2, one line naming the field, no traceback, nothing written."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import hpo, write_csv


def _assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpo: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _launch_writes_nothing(study_path, tmp_path, *fragments):
    result = hpo("launch", str(study_path), cwd=tmp_path)
    _assert_user_error(result, *fragments)
    assert not (tmp_path / "hpo.db").exists(), "a failed launch must not create the database"
    return result


SPACE_CASES = {
    "low >= high": ({"learning_rate": {"low": 1.0e-3, "high": 1.0e-4}}, "search_space.learning_rate.low"),
    "log with low <= 0": ({"learning_rate": {"low": 0.0, "high": 1.0e-3, "log": True}}, "search_space.learning_rate.low: must be > 0"),
    "empty choices": ({"batch_size": {"choices": []}}, "search_space.batch_size.choices: must not be empty"),
    "wrong type": ({"epochs": {"low": 1, "high": "three"}}, "search_space.epochs.high"),
    "unknown dimension": ({"dropout_rate": 0.1}, "search_space.dropout_rate: is not a known dimension"),
    "negative batch": ({"batch_size": {"choices": [0, 16]}}, "search_space.batch_size.choices[0]: must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(SPACE_CASES))
def test_bad_search_space(make_study, tmp_path, case):
    change, fragment = SPACE_CASES[case]
    path = make_study()
    study = yaml.safe_load(path.read_text())
    study["search_space"].update(change)
    path.write_text(yaml.safe_dump(study))
    _launch_writes_nothing(path, tmp_path, fragment)


def test_missing_required_dimension(make_study, tmp_path):
    path = make_study()
    study = yaml.safe_load(path.read_text())
    del study["search_space"]["freeze_depth"]
    path.write_text(yaml.safe_dump(study))
    _launch_writes_nothing(path, tmp_path, "search_space.freeze_depth: is required")


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsearch_space: {learning_rate: [1, 2\n")
    _launch_writes_nothing(path, tmp_path, "YAML syntax error at line")


def test_unknown_key_and_all_problems_at_once(make_study, tmp_path):
    path = make_study(n_trails=5, metric="acc", sampler={"type": "bayes"}, pruner={"type": "asha"})
    result = _launch_writes_nothing(path, tmp_path, "n_trails: is not a known key", "metric: must be", "sampler.type", "pruner.type")
    assert result.stderr.count(";") >= 3


def test_unknown_sampler_option(make_study, tmp_path):
    path = make_study(sampler={"type": "tpe", "n_startup": 3})
    _launch_writes_nothing(path, tmp_path, "sampler.n_startup: is not an option of TPESampler")


@pytest.mark.parametrize("pruner, fragment", [
    ({"type": "median", "metric": "rmse"}, "pruner.metric: rmse does not apply to text-classification"),
    ({"type": "hyperband", "metric": "loss"}, "pruner.metric: hyperband judges with the study's direction"),
])
def test_pruner_metric_the_study_cannot_use(make_study, tmp_path, pruner, fragment):
    _launch_writes_nothing(make_study(pruner=pruner), tmp_path, fragment)


def test_freeze_depth_beyond_model(make_study, tmp_path):
    path = make_study()
    study = yaml.safe_load(path.read_text())
    study["search_space"]["freeze_depth"] = {"low": 0, "high": 5}
    path.write_text(yaml.safe_dump(study))
    result = hpo("validate", str(path), cwd=tmp_path)
    _assert_user_error(result, "search_space.freeze_depth.high: 5 exceeds the depth", "2 layers")
    _launch_writes_nothing(path, tmp_path, "2 layers")


def test_missing_data_file(make_study, tmp_path, tiny_data):
    path = make_study(data={"source": "csv", "train": str(tmp_path / "nope.csv"), "validation": str(tiny_data["validation"])})
    _launch_writes_nothing(path, tmp_path, "data.train: file not found")


@pytest.mark.parametrize("column", ["text_column", "label_column"])
def test_missing_column(make_study, tmp_path, tiny_data, column):
    data = {"source": "csv", "train": str(tiny_data["train"]), "validation": str(tiny_data["validation"]), column: "stars"}
    path = make_study(data=data)
    _launch_writes_nothing(path, tmp_path, f"data.{column}: column 'stars' not in the train split", "columns: text, label")


def test_empty_split(make_study, tmp_path, tiny_data):
    empty = write_csv(tmp_path / "empty.csv", [])
    path = make_study(data={"source": "csv", "train": str(tiny_data["train"]), "validation": str(empty)})
    _launch_writes_nothing(path, tmp_path, "data.validation")


def test_malformed_storage_url(make_study, tmp_path):
    path = make_study(storage="postgres//nohost")
    _launch_writes_nothing(path, tmp_path, "storage: malformed database URL")


def test_unreachable_database_names_host_not_password(make_study, tmp_path):
    path = make_study(storage="postgresql+psycopg://hpo:s3cretpw@127.0.0.1:1/hpo")
    result = _launch_writes_nothing(path, tmp_path, "cannot connect to 127.0.0.1:1/hpo")
    assert "s3cretpw" not in result.stderr + result.stdout


def test_storage_override_from_environment_is_masked(make_study, tmp_path):
    path = make_study()
    result = hpo("validate", str(path), cwd=tmp_path, env={"HPO_STORAGE": "postgresql+psycopg://u:topsecret@127.0.0.1:1/db"})
    _assert_user_error(result, "127.0.0.1:1/db")
    assert "topsecret" not in result.stderr


def test_existing_study_with_other_direction(make_study, tmp_path):
    import optuna

    path = make_study(name="clash", metric="loss")
    optuna.create_study(study_name="clash", storage=f"sqlite:///{tmp_path / 'hpo.db'}", direction="maximize")
    result = hpo("launch", str(path), cwd=tmp_path)
    _assert_user_error(result, "already exists", "direction maximize")
    assert len(optuna.load_study(study_name="clash", storage=f"sqlite:///{tmp_path / 'hpo.db'}").trials) == 0


def test_debug_shows_traceback(make_study, tmp_path):
    path = make_study(metric="acc")
    result = hpo("--debug", "launch", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_duplicate_keys_are_refused_with_path_and_line(make_study, tmp_path):
    path = make_study(name="twice")
    text = path.read_text().replace("search_space:\n", "search_space:\n  epochs: 3\n", 1)
    path.write_text(text + "n_trials: 4\n")
    lines = path.read_text().splitlines()
    first, again = [i + 1 for i, line in enumerate(lines) if line.startswith("n_trials:")]
    _launch_writes_nothing(path, tmp_path, "search_space.epochs: duplicate key at line",
                           f"n_trials: duplicate key at line {again} (first at line {first})")


def test_study_file_not_utf8_names_file_and_encoding(make_study, tmp_path):
    path = make_study()
    path.write_bytes(path.read_bytes().replace(b"name: ", b"name: caf\xe9-", 1))
    _launch_writes_nothing(path, tmp_path, str(path), "is not UTF-8 text (byte 0xe9 on line 1")


def test_latin1_csv_names_the_file_and_encoding(make_study, tmp_path, tiny_data):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(tiny_data["train"].read_bytes().replace(b"\n", "\ncaf\xe9 good tea,pos\n".encode("latin-1"), 3))
    path = make_study(data={"source": "csv", "train": str(latin), "validation": str(tiny_data["validation"])})
    _launch_writes_nothing(path, tmp_path, f"data.train: {latin} is not UTF-8 text (byte 0xe9 on line 2")


@pytest.mark.parametrize("flags, visible, fragment", [
    (["--gpus", "5"], "", "--gpus 5: no GPU is visible on this host"),
    (["--gpus", "5"], "0", "GPU 5 not visible (visible: 0)"),
    (["--gpus", "abc"], "0", "--gpus abc: no GPU abc on this host"),
    (["--workers", "0"], None, "--workers 0: must be at least 1"),
    (["--workers", "-1"], None, "--workers -1: must be at least 1"),
    (["--workers", "two"], None, "argument --workers: invalid int value: 'two'"),  # argparse's, on one line too
])
def test_launch_flags_that_cannot_be_honoured(make_study, tmp_path, flags, visible, fragment):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    result = hpo("launch", str(make_study()), *flags, cwd=tmp_path, env=env)
    _assert_user_error(result, fragment)
    assert "starting" not in result.stdout and not (tmp_path / "hpo.db").exists()


def test_status_top_must_be_positive(make_study, tmp_path):
    _assert_user_error(hpo("status", str(make_study()), "--top", "-1", cwd=tmp_path), "--top -1: must be at least 1")


def test_strict_types_and_names(make_study, tmp_path):
    path = make_study(n_trials=True, seed="2", data={"source": "demo", "max_length": True})
    path.write_text(path.read_text().replace("name: ", "name: \"two\\nlines\"\nold_name: ", 1))
    _launch_writes_nothing(
        path, tmp_path,
        "n_trials: must be an integer, got true (YAML reads yes, no, on, off, true and false as booleans)",
        "seed: must be an integer, got the string '2' (remove the quotes)",
        "data.max_length: must be an integer, got true",
        "name: must be one line",
        "old_name: is not a known key",
    )
    _launch_writes_nothing(make_study(name="   "), tmp_path, "name: must not be blank")


def test_sampler_and_pruner_options_are_checked_against_their_constructors(make_study, tmp_path):
    path = make_study(sampler={"type": "tpe", "seed": "abc", "constraints_func": "foo"},
                      pruner={"type": "percentile", "n_startup_trials": 1.5})
    fragments = ["sampler.seed: must be an integer or null, got \"abc\"", "sampler.constraints_func: takes a Python function",
                 "pruner.n_startup_trials: must be an integer, got 1.5", "pruner.percentile: is required by PercentilePruner"]
    _assert_user_error(hpo("validate", str(path), "--offline", cwd=tmp_path), str(path), *fragments)
    _launch_writes_nothing(path, tmp_path, *fragments)


def test_oversized_options_and_alias_bombs_are_refused(make_study, tmp_path):
    path = make_study(sampler={"type": "cmaes"})
    items, refs = ", ".join(["xxxxxxxxxx"] * 200), ", ".join(["*a"] * 90)
    path.write_text(path.read_text().replace("type: cmaes", f"type: cmaes\n  x0: {{a: &a [{items}], b: [{refs}]}}"))
    _launch_writes_nothing(path, tmp_path, "sampler: its options take", "bytes; at most 8,192 are stored with the study")
    levels = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7))
    path.write_text(path.read_text().replace("type: cmaes", "type: cmaes\n  x0:\n    l0: &l0 [x]\n" + levels.replace("  l", "    l")))
    _launch_writes_nothing(path, tmp_path, "holds more than 50,000 values once YAML aliases are expanded")


@pytest.mark.parametrize("model, fragment", [
    ("./no-such-model", "model: no such directory: {folder}/no-such-model"),
    ("empty", "model: not a model directory (no config.json): {folder}/empty"),
])
def test_model_folder_that_is_not_a_model(make_study, tmp_path, model, fragment):
    (tmp_path / "empty").mkdir()
    path = make_study(model=model)
    result = hpo("validate", str(path), "--offline", cwd=tmp_path.parent)
    _assert_user_error(result, fragment.format(folder=tmp_path))
    _launch_writes_nothing(path, tmp_path, fragment.format(folder=tmp_path))


def test_model_folder_is_relative_to_the_study_file(make_study, tmp_path, tiny_model):
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from hpo.spec import load_spec

    assert load_spec(make_study(model="./models/tiny")).model == str(tmp_path / "models" / "tiny")
    assert load_spec(make_study(model="org/name")).model == "org/name"  # a hub id
    # Beside the study file, even when it reads like org/name, whatever the current directory.
    result = hpo("validate", str(make_study(model="models/tiny")), "--offline", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert f"model     {tmp_path}/models/tiny" in result.stdout
