"""report.html in a real browser: headless Chromium (Debian's ``chromium`` package, which
``.ci/run`` installs) loads every image and logs nothing on the console; a screenshot is
written under the run directory."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
#: appended to a copy of the page: records, once loaded, how many images decoded
_PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', broken.length);
});</script>"""


def _chromium(args, tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list:
    """Lines chromium logs for the page's console (``INFO:CONSOLE:<line>] "..."``) and
    failed loads."""
    return [l for l in stderr.splitlines() if ":CONSOLE" in l or "Failed to load resource" in l
            or "Not allowed to load local resource" in l]


@pytest.mark.slow
@pytest.mark.run_report
@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test needs Debian's chromium package "
                                             "(apt-get install chromium; .ci/run installs it)")
def test_report_page_loads_every_image_without_console_errors(tmp_path):
    from benchmark.compose import run_with_overrides

    run = tmp_path / "run"
    run_with_overrides(["model=tiny", "dataset=synthetic", "dataset.n_images=2", "method.extract.image_size=128",
                        "run.progress=false", "method=diffseg", "method.grid.kl_threshold=[0.9,1.1]"], run)
    _check_page(run / "report.html", run / "report_screenshot.png", tmp_path, min_images=4)  # 2 plots + 2 examples


@pytest.mark.slow
@pytest.mark.run_report
@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test needs Debian's chromium package "
                                             "(apt-get install chromium; .ci/run installs it)")
def test_sweep_page_of_two_methods_loads_in_the_browser(tmp_path):
    from benchmark.compose import run_with_overrides
    from benchmark.report import report

    base = ["model=tiny", "dataset=synthetic", "dataset.n_images=1", "method.extract.image_size=128", "run.progress=false"]
    run_with_overrides(base + ["method=diffseg"], tmp_path / "diffseg")
    run_with_overrides(base + ["method=kmeans", "method.grid.k=[2,4]"], tmp_path / "kmeans")
    out = tmp_path / "all"
    result = report([tmp_path / "diffseg", tmp_path / "kmeans"], out=out)
    assert sorted(result["summary"]["settings"]) == ["", "k=2", "k=4"]
    page = out / "report.html"
    assert "Summary (headline metric, method × dataset)" in page.read_text()
    _check_page(page, out / "report_screenshot.png", tmp_path, min_images=3)  # plot_k + 2 example figures


def _check_page(page: Path, shot: Path, tmp_path: Path, min_images: int) -> None:
    html = page.read_text()
    n_images = len(re.findall(r"<img ", html))
    assert n_images >= min_images

    # the page as written: nothing on the console, a screenshot beside it
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000

    # a copy with a probe script: every image decoded once the page has loaded
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE + "</body>"))
    proc = _chromium(["--dump-dom", probe.resolve().as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-images="(\d+)" data-broken="(\d+)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    assert (int(found.group(1)), int(found.group(2))) == (n_images, 0)
    assert console_messages(proc.stderr) == []


def test_console_message_filter_reads_chromium_logging():
    stderr = ('[1:1:1129/205805.830263:INFO:CONSOLE:240] "boom", source: file:///r.html (240)\n'
              "[1:1:1129/205805.8:ERROR:bus.cc(407)] Failed to connect to the bus\n")
    assert len(console_messages(stderr)) == 1
