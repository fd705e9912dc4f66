"""Screenshot of `hpo dashboard` on a study in headless Chromium, as docs/dashboard.png was made.

    python docs/screenshot.py studies/demo.yaml demo-minilm-reviews docs/dashboard.png

Uses the browser test's helpers (tests/webdriver.py, tests/dashboard_process.py);
needs Debian's chromium and chromium-driver.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dashboard_process import dashboard  # noqa: E402
from webdriver import Browser, find  # noqa: E402


def main(study: Path, name: str, out: Path) -> None:
    profile = tempfile.mkdtemp(prefix="hpo-chromium-")  # a fresh profile, outside the repository
    browser = Browser(Path(profile), find("chromium", "chromium-browser"), find("chromedriver"))
    try:
        with dashboard(study, "--read-only", cwd=study.resolve().parent) as (url, process, lines):
            browser.open(url)
            browser.wait_for_text(name)
            browser.wait_for_text("accuracy")
            time.sleep(3)  # the plots draw after the text appears
            browser.screenshot(out)
    finally:
        browser.close()
    print("wrote", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
