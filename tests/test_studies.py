"""Every shipped study file validates, offline, as a user would run `hpo validate` on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import hpo

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))


def test_there_are_examples():
    assert {p.name for p in STUDIES} >= {"demo.yaml", "sst2-distilbert.yaml"}


def test_every_study_file_validates(tmp_path):
    """One `hpo validate studies/*.yaml`, as a CI job over a folder of studies would run it."""
    result = hpo("validate", *map(str, STUDIES), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for path in STUDIES:
        assert f"{path}: valid" in result.stdout


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_file_header_says_how_to_run_it(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("hpo " in line for line in header), f"{path.name} needs a header with the command that runs it"
