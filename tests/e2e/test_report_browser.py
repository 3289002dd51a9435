"""report.html opens from file:// in headless Chromium with its plots and tables rendered."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest
from qat_sweep.analysis.design.synth import synthetic_table, table_to_records

from qat_sweep.commands.fit import main as fit_main

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium"
    ),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    for record in table_to_records(synthetic_table(seed=3)):  # records carry per-site metrics
        (tmp / "runs" / record["run_key"]).mkdir(parents=True)
        (tmp / "runs" / record["run_key"] / "result.json").write_text(json.dumps(record))
    argv = ["--runs", str(tmp / "runs"), "--out", str(tmp / "out"), "--bootstrap", "50"]
    assert fit_main(argv) == 0
    return tmp / "out" / "report.html"


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120)


def test_dom_has_embedded_plots_and_tables(report, tmp_path):
    proc = _chromium(tmp_path, "--dump-dom", report.as_uri())
    dom = proc.stdout.decode()
    assert proc.returncode == 0 and "</html>" in dom
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', dom)
    assert len(images) >= 8
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert dom.count("<table") >= 5
    assert "Which law holds" in dom and 'alt="law_residuals"' in dom  # the paper's law listed
    assert "Preregistered predictions" in dom
    for data in images:  # 150 dpi: the PNG's pHYs chunk holds pixels per metre
        raw = base64.b64decode(data)
        ppm = int.from_bytes(raw[raw.index(b"pHYs") + 4 :][:4], "big")
        assert ppm >= 150 / 0.0254 - 1


def test_the_answer_comes_first_and_the_detail_last(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout.decode()
    titles = re.findall(
        r'<h2>([^<]+)</h2>|<details class="section"><summary>([^<]+)</summary>', dom
    )
    order = [a or b for a, b in titles]
    assert order[:3] == ["Verdict", "Results per cell", "Figures"], order
    assert order[-2:] == ["Validation", "Excluded runs"], order  # folded diagnostics at the end
    verdict = dom[dom.index("<h2>Verdict</h2>") : dom.index("<h2>Results per cell</h2>")]
    assert "gamma_N" in verdict and "delta falls with N?" in verdict
    assert (
        'alt="delta_vs_G"' in dom
        and 'alt="pairs_bf16"' in dom
        and 'alt="predicted_vs_measured"' in dom
    )
    # 70B from a grid of at most 595M parameters: only in a folded, flagged table
    far = dom.index("FAR OUTSIDE THE FITTED RANGE")
    assert dom.rfind("<details", 0, far) > dom.rfind("</details>", 0, far)
    predictions = dom[dom.index("<h2>Predictions</h2>") :]
    assert "): an extrapolation" not in predictions  # the reach column says it, no row warns
    notes = re.findall(r"<p>\[\d+\] ([^<]+)</p>", predictions)
    assert notes and len(notes) == len(set(notes))  # each warning said once


def test_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr.decode()[-500:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 4000 and pixels.shape[1] >= 1280
    assert pixels.std() > 0.05  # a blank page is uniform


def test_nothing_runs_off_a_1280_px_page(report, tmp_path):
    """Wide tables scroll inside their own box: the page itself never scrolls sideways."""
    probe = tmp_path / "probe.html"
    script = "<script>document.body.dataset.sw = document.documentElement.scrollWidth</script>"
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    dom = _chromium(tmp_path, "--window-size=1280,900", "--dump-dom", probe.as_uri()).stdout
    width = int(re.search(rb'data-sw="(\d+)"', dom).group(1))
    assert width <= 1280
