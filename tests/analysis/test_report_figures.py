"""The report's figures from run directories: PNG at 150 dpi with an SVG beside, the twins'
training curves read from metrics.jsonl, runs the fit left out drawn with their reason, and the
report's order (the verdict first)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from qat_sweep.analysis.design.synth import paper_grid, synthetic_table, table_to_records

from qat_sweep.commands.fit import main as fit_main


def _curve(final: float, steps: int = 40) -> str:
    """A metrics.jsonl as the trainer appends it: loss falling to the run's final loss."""
    rows = [
        {"step": s, "tokens": 2048 * s, "loss": final + 3.0 / s, "loss_smoothed": final + 3.0 / s}
        for s in range(1, steps + 1)
    ]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    grid = [r for r in paper_grid() if r["scheme"] in ("bf16", "w4a4") and r["format"] != "fp4"]
    table = synthetic_table(runs=grid, seed=2)
    quant = table[(table["scheme"] == "w4a4") & ~table["holdout"]]
    shown = quant[quant["tokens"] == quant["tokens"].max()].index[0]  # in delta_vs_N's slice
    table.loc[shown, "loss"] -= 0.5  # below its BF16 twin: a non-positive gap, excluded
    for record in table_to_records(table, sweep="small"):
        run_dir = root / "small" / record["run_key"]
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps(record))
        (run_dir / "metrics.jsonl").write_text(_curve(record["loss"]))
    out = root / "report"
    argv = ["sweep=small", f"paths.runs={root}", "--out", str(out), "--bootstrap", "30"]
    assert fit_main(argv) == 0
    return out


def test_every_figure_is_150_dpi_png_with_svg_beside(report):
    pngs = sorted((report / "plots").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"bf16_law", "delta_vs_N", "delta_vs_G", "twin_curves", "pairs_bf16"} <= names
    for png in pngs:
        raw = png.read_bytes()
        ppm = int.from_bytes(raw[raw.index(b"pHYs") + 4 :][:4], "big")
        assert ppm >= 150 / 0.0254 - 1, png.name
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_left_out_runs_carry_their_reason_and_the_twins_their_labels(report):
    svg = {p.stem: p.read_text() for p in (report / "plots").glob("*.svg")}
    excluded = [name for name, text in svg.items() if "excluded: non-positive gap" in text]
    assert excluded, "the excluded run's reason is in no legend"
    assert "BF16 twin" in svg["twin_curves"] and "w4a4/int4" in svg["twin_curves"]
    assert "log2 group size" not in svg["delta_vs_G"]  # the axis shows G, and says so
    assert "group size G" in svg["delta_vs_G"]


def test_report_leads_with_the_verdict_and_folds_the_diagnostics(report):
    page = (report / "report.html").read_text()
    titles = re.findall(
        r'<h2>([^<]+)</h2>|<details class="section"><summary>([^<]+)</summary>', page
    )
    order = [a or b for a, b in titles]
    assert order[:3] == ["Verdict", "Results per cell", "Figures"]
    assert order[-2:] == ["Validation", "Excluded runs"]
    results = page[page.index("<h2>Results per cell</h2>") : page.index("<h2>Figures</h2>")]
    assert "excluded [1]" in results and "[1] non-positive gap" in results
