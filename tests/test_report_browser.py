"""``report.html`` opened in a real browser (headless Chromium): it renders, every image
decodes, the tables are there, no script error, nothing fetched from the network.

Chromium is required, not optional: without it this test fails and says how to install it.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import matplotlib.image
import pytest

from otbench.reports import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # a network image fails: not decoded
         "--enable-logging=stderr", "--v=0")
#: Runs before the page's own content; reports what a reader would see once it loaded.
PROBE = """<script>
window.addEventListener("error", () => {
  const root = document.documentElement.dataset;
  root.errors = String(Number(root.errors || 0) + 1);
});
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const body = document.body.dataset;
  body.images = images.length;
  body.decoded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  body.tables = document.querySelectorAll("table").length;
  body.resultRows = document.querySelectorAll("table.results tbody tr").length;
  body.probe = "done";
});
</script>"""


def fixtures() -> ModuleType:
    """The known-numbers store of test_reports.py, loaded by path so this works whatever
    pytest's import mode."""
    spec = importlib.util.spec_from_file_location("_report_fixtures",
                                                  Path(__file__).with_name("test_reports.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to test report.html: install it, e.g. "
                "`apt-get install -y chromium` (Debian/Ubuntu)", pytrace=False)


def run_browser(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    known = fixtures()
    with known.scratch_dir(tmp_path_factory) as folder:
        store = known.build_store(folder)
        yield write_report(store.uri, known.EXPERIMENT, folder / "report")


def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    result = run_browser(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000",
                         page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05
    inked = (pixels < 0.9).any(axis=-1).mean()
    assert inked > 0.02, f"only {inked:.1%} of the screenshot is not white"


def test_page_renders_tables_and_images_without_errors(page: Path, tmp_path: Path) -> None:
    probe = page.with_name("probe.html")  # beside the report: same relative links
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    result = run_browser(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                         probe.as_uri())
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body is not None, result.stderr[-2000:]
    data = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1)))
    assert data.get("probe") == "done", result.stderr[-2000:]
    assert int(data["images"]) == 9
    assert data["decoded"] == data["images"], "an image did not decode"
    assert int(data["result-rows"]) == 3 + 3  # methods; two differences to OT, detectable
    assert int(data["tables"]) >= 5  # results, settings, hyper-parameters, software, runs
    root = re.search(r"<html([^>]*)>", result.stdout)
    assert root is not None and "data-errors" not in root.group(1), "a script error"
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    problems = [line for line in console if re.search(r"Uncaught|Failed to load", line)]
    assert not problems, problems
    assert page.read_text().count("<table") == int(data["tables"])
