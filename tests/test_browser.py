"""The dashboard in a real browser: headless Chromium opens the study page and shows the study.

Needs Debian's ``chromium`` and ``chromium-driver`` (CI installs them). Like
PostgreSQL, a missing browser is a failure, never a skip.
"""

from __future__ import annotations

import pytest

from dashboard_process import base, dashboard, request
from webdriver import Browser, find

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser(tmp_path):
    chromium = find("chromium", "chromium-browser", "google-chrome")
    chromedriver = find("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("the browser test needs Chromium and chromedriver: apt-get install -y chromium chromium-driver")
    opened = Browser(tmp_path / "profile", chromium, chromedriver)  # a fresh profile every time
    try:
        yield opened
    finally:
        opened.close()


def test_study_page_shows_the_study_in_chromium(launched_study, browser, tmp_path):
    with dashboard(launched_study.path, "--read-only", cwd=launched_study.folder) as (url, process, lines):
        browser.open(url)
        browser.wait_for_text(launched_study.name)  # the page works read-only...
        browser.wait_for_text("accuracy")  # with the metric's name, set by hpo launch, on the plots
        shot = browser.screenshot(tmp_path / "dashboard.png")
        status, _ = request(base(url) + "/api/studies", "POST", {"study_name": "x", "directions": ["minimize"]})
        assert status == 403  # ...while changes are refused
    assert shot.read_bytes().startswith(PNG_SIGNATURE) and shot.stat().st_size > 10_000


def test_report_page_fits_its_width_in_chromium(launched_study, browser, tmp_path):
    from conftest import hpo

    out = tmp_path / "report"
    result = hpo("report", str(launched_study.path), "-o", str(out), cwd=launched_study.folder)
    assert result.returncode == 0, result.stderr
    measure = """
        const page = document.documentElement, top = document.querySelector('table.top');
        return {page: page.scrollWidth - page.clientWidth, top: top.getBoundingClientRect().width,
                room: top.parentElement.clientWidth, scrolls: top.parentElement.scrollWidth - top.parentElement.clientWidth};"""
    browser.open(out.joinpath("index.html").as_uri())
    browser.wait_for_text("Top trials")
    wide = browser.run(measure)
    assert wide["page"] <= 0 and wide["scrolls"] <= 0 and wide["top"] <= wide["room"], wide  # the top-trials table fits
    browser.resize(700, 900)  # a narrow window: the table scrolls inside its box, the page does not run wider
    narrow = browser.run(measure)
    assert narrow["page"] <= 0, narrow
    browser.screenshot(tmp_path / "report.png")
