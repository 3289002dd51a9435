"""The wandb mirror read back from real offline runs: identity, final summary, twin delta.

Three real tiny runs of one sweep, in this order: a W4A4 G=32 run, its BF16 twin, then a
W4A4 per-channel run. The per-channel run finishes after its twin, so it writes final/delta
itself; the G=32 run finished before its twin, so (offline) its delta is left to `sync`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qat_sweep import wandb_api
from qat_sweep.commands.sync import main as sync_main
from qat_sweep.common import write_json_atomic
from qat_sweep.config.compose import compose_run
from qat_sweep.record import RECORD_NAME, sweep_records
from qat_sweep.sweep.sync import offline_files, summary_updates
from qat_sweep.train.tracking import Tracker, wandb_id
from qat_sweep.train.trainer import train

SWEEP = "wb"
TINY = [
    "model=0.2M",
    "tokens=20480",  # 10 steps of 16 x 128 tokens
    "eval.batches=1",
    "eval.batch_seqs=4",
    "train.threads=1",
    "logger=wandb",
    "logger.wandb.mode=offline",
    f"sweep_name={SWEEP}",
]
W4A4 = ["quant=w4a4", "quant.format=int4"]


def leet(wandb_file: Path, *flags: str) -> str:
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(wandb_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


def offline_fragments(record: dict) -> list[Path]:
    """A record's offline wandb logs, oldest first: its own, then any resumed fragment."""
    return sorted((run_dir_of(record) / "wandb").glob("offline-run-*/run-*.wandb"))


def offline_file(record: dict) -> Path:
    return offline_fragments(record)[0]


def inspect(record: dict, fragment: int = 0) -> dict:
    """`wandb leet inspect --summary --json` of a record's offline run (config + summary)."""
    return json.loads(leet(offline_fragments(record)[fragment], "--summary"))


def run_header(record: dict) -> dict:
    """The run record of the offline log (`wandb leet inspect --json`): group, job type."""
    lines = [json.loads(line) for line in leet(offline_file(record)).splitlines()]
    return next(line["run"] for line in lines if line["type"] == "run")


def run_dir_of(record: dict) -> Path:
    return Path(record["config"]["paths"]["runs"]) / record["sweep"] / record["run_key"]


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict[str, dict]:
    """Records of the three runs, trained in the order the module docstring gives."""
    root = tmp_path_factory.mktemp("wandb")
    home = root / "wandb-home"
    env = {f"WANDB_{v}_DIR": str(home) for v in ("CACHE", "CONFIG", "DATA")} | {
        "WANDB_DIR": str(home)
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("WANDB_MODE", raising=False)
        base = [*TINY, f"data.dir={demo_data}", f"paths.runs={root / 'runs'}"]
        order = {
            "g32": [*W4A4, "quant.group_size=32", 'subgrid="main"'],
            "bf16": ["quant=bf16", 'subgrid="bf16_twins"', "holdout=true"],
            "channel": [*W4A4, "quant.group_size=channel", 'subgrid="main"', "holdout=true"],
        }
        records = {name: train(compose_run([*base, *extra])) for name, extra in order.items()}
    assert all(r["status"] == "completed" for r in records.values()), records
    return records


@pytest.mark.slow
def test_offline_run_config_has_the_flat_identity(sweep_runs: dict[str, dict]) -> None:
    bf16, channel = sweep_runs["bf16"], sweep_runs["channel"]
    config = inspect(channel)["config"]
    assert config["n_params"] == channel["n_params"] == 184_320  # non-embedding, the law's N
    assert config["n_params_total"] == channel["n_params_total"] > config["n_params"]
    assert config["tokens"] == 20480 and config["lr"] == channel["lr"] and config["seed"] == 0
    assert (config["scheme"], config["format"]) == ("w4a4", "int4")
    assert (config["group_size"], config["group_elems"]) == ("channel", 64)  # hidden size
    assert config["run_key"] == channel["run_key"] and config["twin_key"] == bf16["run_key"]
    assert (config["sweep"], config["subgrid"], config["holdout"]) == (SWEEP, "main", True)
    assert config["quant"]["group_size"] == "channel"  # the nested config is still there
    g32 = inspect(sweep_runs["g32"])["config"]
    assert (g32["group_size"], g32["group_elems"], g32["holdout"]) == ("32", 32, False)
    header = run_header(channel)
    assert (header["run_group"], header["job_type"]) == (SWEEP, "w4a4")  # workspace filter
    twin = inspect(bf16)["config"]
    assert (twin["scheme"], twin["format"], twin["group_size"], twin["group_elems"]) == (
        "bf16",
        "bf16",
        None,
        None,
    )
    assert twin["twin_key"] == twin["run_key"] == bf16["run_key"]
    # the plan's membership lands in the record too, outside the run identity
    assert (channel["subgrid"], channel["holdout"], bf16["subgrid"]) == ("main", True, "bf16_twins")


@pytest.mark.slow
def test_final_summary_and_delta_of_the_second_finisher(sweep_runs: dict[str, dict]) -> None:
    bf16, channel, g32 = sweep_runs["bf16"], sweep_runs["channel"], sweep_runs["g32"]
    summary = inspect(channel)["summary"]
    assert summary["final/loss"] == pytest.approx(channel["loss"], rel=1e-12)
    assert summary["final/val_loss"] == pytest.approx(channel["val_loss"], rel=1e-12)
    assert summary["final/tokens_trained"] == channel["metrics"]["tokens_trained"] == 20480
    assert summary["final/status"] == "completed"
    assert "final/mfu" not in summary  # None on a CPU (no peak FLOPS): wandb drops it
    assert summary["final/bf16_loss"] == pytest.approx(bf16["loss"], rel=1e-12)
    assert summary["final/delta"] == pytest.approx(channel["loss"] - bf16["loss"], abs=1e-12)
    assert summary["loss"] == pytest.approx(channel["loss"], rel=1e-12)  # what fit --wandb reads
    twin = inspect(bf16)["summary"]
    assert twin["final/loss"] == pytest.approx(bf16["loss"]) and "final/delta" not in twin
    # G=32 finished before its twin, so its own log has no delta; the twin, finishing second,
    # wrote it into a resumed offline fragment of G=32's run (sync uploads it after the log)
    own, late = offline_fragments(g32)
    early = inspect(g32)["summary"]
    assert early["final/loss"] == pytest.approx(g32["loss"]) and "final/delta" not in early
    written = inspect(g32, 1)["summary"]
    assert written["final/delta"] == pytest.approx(g32["loss"] - bf16["loss"], abs=1e-12)
    assert written["facet/delta@N=0.2M,D=20.48K"] == written["final/delta"]
    assert own.parent.name.endswith(g32["wandb"]["id"]) and late.parent.name.endswith(
        g32["wandb"]["id"]
    )
    assert len(offline_fragments(channel)) == 1  # it finished second itself


# ------------------------------------------------------------------------ one delta


def pair_record(run_key: str, loss: float | None, twin_key: str, group: int | None = 32) -> dict:
    """A valid record of a tiny run (BF16 when `group` is None); no loss: a failed run."""
    status = "completed" if loss is not None else "failed"
    return {
        "schema": 1, "run_key": run_key, "sweep": SWEEP, "status": status,
        "error": None if loss is not None else "RuntimeError: node lost", "model": "0.2M",
        "n_params": 184_320, "n_params_total": 250_000, "hidden_size": 64, "tokens": 20480,
        "scheme": "w4a4" if group else "bf16", "format": "int4" if group else "bf16",
        "group_size": group, "lr": 1e-3, "seed": 0, "loss": loss, "val_loss": loss,
        "metrics": {}, "config": {}, "versions": {}, "slurm": None, "wandb": {"id": run_key},
        "twin_key": twin_key,
    }  # fmt: skip


def test_the_wandb_summary_and_the_fit_give_a_pair_the_same_delta_and_exclusion(
    tmp_path: Path,
) -> None:
    """One definition of delta (qat_sweep.delta): record -> wandb summary and record -> fit
    table agree on the delta and on why the fit leaves a pair out."""
    from qat_sweep.analysis.collect import build_table, load_records, pair_deltas

    records = [
        pair_record("bf16-ok", 3.0, "bf16-ok", None),
        pair_record("bf16-failed", None, "bf16-failed", None),
        pair_record("above", 3.3, "bf16-ok", 32),
        pair_record("below", 2.9, "bf16-ok", 64),  # QAT beat BF16: shown, not fitted
        pair_record("twin-failed", 3.3, "bf16-failed", 128),
        pair_record("twin-missing", 3.3, "bf16-gone", 256),
    ]
    sweep_dir = tmp_path / SWEEP
    for record in records:
        write_json_atomic(sweep_dir / record["run_key"] / RECORD_NAME, record)
    rows, skipped = load_records(sweep_dir)
    assert not skipped
    table = pair_deltas(build_table(rows)).set_index("run_key")
    summaries = summary_updates([r.record for r in sweep_records(sweep_dir)], sweep_dir, {})
    expected = {
        "above": "",
        "below": "non-positive gap -0.1",
        "twin-failed": "no BF16 twin (bf16-failed)",
        "twin-missing": "no BF16 twin (bf16-gone)",
    }
    for run_key, reason in expected.items():
        summary, row = summaries[run_key], table.loc[run_key]
        assert summary["final/delta_excluded"] == row["excluded"] == reason, run_key
        if math.isnan(row["delta"]):
            assert "final/delta" not in summary and "final/bf16_loss" not in summary
        else:
            assert summary["final/delta"] == row["delta"]
            assert summary["final/bf16_loss"] == row["bf16_loss"] == 3.0
    assert table.loc["below", "delta"] == pytest.approx(-0.1)
    assert "final/delta_excluded" not in summaries["bf16-ok"]


# ----------------------------------------------------------------------------- sync


class RecordingApi:
    """Stands in for qat_sweep.wandb_api (the only module that talks to a wandb server) and
    records every call; there is no server here."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, key: bool = True) -> None:
        self.calls: list[tuple] = []
        for name in ("has_api_key", "sync_offline", "default_entity", "update_summary"):
            monkeypatch.setattr(wandb_api, name, getattr(self, name))
        monkeypatch.setattr(wandb_api, "save_workspace", self.save_workspace)
        self.key = key

    def has_api_key(self) -> bool:
        self.calls.append(("has_api_key",))
        return self.key

    def sync_offline(self, files, entity, project, dry_run=False) -> int:
        self.calls.append(("sync_offline", sorted(files), entity, project, dry_run))
        return 0

    def default_entity(self) -> str:
        self.calls.append(("default_entity",))
        return "team"

    def update_summary(self, path: str, values: dict) -> None:
        self.calls.append(("update_summary", path, values))

    def save_workspace(self, workspace) -> str:
        self.calls.append(("save_workspace", workspace))
        return f"https://wandb.example/{workspace.entity}/{workspace.project}?nw=abc"

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def fit_dir_for(tmp_path: Path, records: dict[str, dict]) -> tuple[Path, dict]:
    """A fit output directory (fit.json + runs.csv) with a known delta law for w4a4/int4."""
    params = {"k": 2.0, "gamma_N": 0.3, "gamma_D": 0.1, "gamma_G": 0.5}
    bf16 = records["bf16"]["loss"]
    rows = [
        {
            "run_key": r["run_key"],
            "scheme": r["scheme"],
            "format": r["format"],
            "n_params": r["n_params"],
            "tokens": r["tokens"],
            "G": {32: 32.0, "channel": 64.0}.get(r["group_size"], float("nan")),
            "delta": r["loss"] - bf16 if r["scheme"] != "bf16" else float("nan"),
        }
        for r in records.values()
    ]
    out = tmp_path / "fit"
    out.mkdir()
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    (out / "fit.json").write_text(json.dumps({"delta": {"w4a4/int4": {"params": params}}}))
    return out, params


def law(params: dict, n: float, d: float, g: float) -> float:
    return (
        params["k"]
        * d ** params["gamma_D"]
        * math.log2(g) ** params["gamma_G"]
        / n ** params["gamma_N"]
    )


@pytest.mark.slow
def test_sync_dry_run_lists_uploads_with_real_wandb_and_contacts_no_server(
    sweep_runs: dict[str, dict],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = Path(sweep_runs["bf16"]["config"]["paths"]["runs"])
    monkeypatch.chdir(tmp_path)  # no reports/<sweep>/ here: not fitted yet
    code = sync_main([f"sweep={SWEEP}", f"paths.runs={root}", "--dry-run"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert f"no fit in reports/{SWEEP}" in out
    # the three runs' logs and g32's fragment with the delta its twin wrote
    assert "4 offline run file(s)" in out and "0 already uploaded, 4 to upload" in out
    assert "Would sync 4 run(s)" in out + err  # printed by the real `wandb sync --dry-run`
    assert f"`qat-sweep fit sweep={SWEEP} paths.runs={root} --out reports/{SWEEP}`" in out
    assert "2 with final/delta" in out  # g32 (twin finished after it) and channel
    assert "would update " + sweep_runs["g32"]["run_key"] in out


@pytest.mark.slow
def test_sync_uploads_pending_files_then_writes_summaries_from_the_records(
    sweep_runs: dict[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordingApi(monkeypatch)
    root = Path(sweep_runs["bf16"]["config"]["paths"]["runs"])
    fit_dir, params = fit_dir_for(tmp_path, sweep_runs)
    argv = [f"sweep={SWEEP}", f"paths.runs={root}", "--fit", str(fit_dir)]
    assert sync_main(argv) == 0
    files = sorted(f for r in sweep_runs.values() for f in offline_fragments(r))
    assert api.named("sync_offline") == [("sync_offline", files, None, None, False)]
    updates = {path: values for _, path, values in api.named("update_summary")}
    ids = {name: r["wandb"]["id"] for name, r in sweep_runs.items()}
    assert set(updates) == {f"team/qat-sweep/{i}" for i in ids.values()}  # offline: default entity
    g32 = updates[f"team/qat-sweep/{ids['g32']}"]
    delta = sweep_runs["g32"]["loss"] - sweep_runs["bf16"]["loss"]
    assert g32["final/delta"] == pytest.approx(delta, abs=1e-12)
    assert g32["final/bf16_loss"] == sweep_runs["bf16"]["loss"]
    predicted = law(params, 184_320, 20480, 32)
    assert g32["fit/predicted_delta"] == pytest.approx(predicted, rel=1e-9)
    assert g32["fit/residual"] == pytest.approx(delta - predicted, rel=1e-9)
    channel = updates[f"team/qat-sweep/{ids['channel']}"]
    assert channel["fit/predicted_delta"] == pytest.approx(law(params, 184_320, 20480, 64))
    bf16 = updates[f"team/qat-sweep/{ids['bf16']}"]
    assert bf16["final/status"] == "completed" and "final/delta" not in bf16
    assert "fit/predicted_delta" not in bf16

    # wandb marks what it uploaded (<file>.synced): those are not uploaded again
    files[0].with_name(files[0].name + ".synced").touch()
    api.calls.clear()
    assert sync_main([*argv, "--entity", "lab", "--project", "law"]) == 0
    assert api.named("sync_offline") == [("sync_offline", files[1:], "lab", "law", False)]
    assert {p for _, p, _ in api.named("update_summary")} == {f"lab/law/{i}" for i in ids.values()}
    files[0].with_name(files[0].name + ".synced").unlink()


def test_sync_refuses_without_a_key_or_with_bad_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api = RecordingApi(monkeypatch, key=False)
    (tmp_path / SWEEP).mkdir()
    assert sync_main([f"sweep={SWEEP}", f"paths.runs={tmp_path}"]) == 2
    assert "no wandb API key" in capsys.readouterr().err
    assert sync_main([f"paths.runs={tmp_path}"]) == 2
    assert "missing sweep=NAME" in capsys.readouterr().err
    assert sync_main(["sweep=nosuch", f"paths.runs={tmp_path}"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert sync_main([f"sweep={SWEEP}", "bogus=1"]) == 2
    assert "unknown key 'bogus' in 'bogus=1'" in capsys.readouterr().err
    assert sync_main([f"sweep={SWEEP}", f"paths.runs={tmp_path}", "--fit", str(tmp_path)]) == 2
    assert "no fit.json" in capsys.readouterr().err
    assert api.named("sync_offline") == [] and api.named("update_summary") == []


@pytest.mark.slow
def test_online_bf16_twin_finishing_second_writes_its_quantized_twins_delta(
    sweep_runs: dict[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordingApi(monkeypatch)
    bf16, g32, channel = sweep_runs["bf16"], sweep_runs["g32"], sweep_runs["channel"]
    sweep_dir = tmp_path / SWEEP
    for record in (g32, channel, bf16):  # runs that logged online
        online = {**record, "wandb": {**record["wandb"], "mode": "online"}}
        write_json_atomic(sweep_dir / record["run_key"] / "result.json", online)
    tracker = Tracker(
        sweep_dir / bf16["run_key"],
        enabled=True,
        wandb_settings={"mode": "disabled"},
        wandb_init={},
    )
    tracker.wandb_info = {**bf16["wandb"], "mode": "online", "entity": "lab"}  # an online run
    tracker.finish_run(bf16)
    updates = {path: values for _, path, values in api.named("update_summary")}
    assert set(updates) == {f"lab/qat-sweep/{r['wandb']['id']}" for r in (g32, channel)}
    for record in (g32, channel):
        values = updates[f"lab/qat-sweep/{record['wandb']['id']}"]
        assert values["final/delta"] == pytest.approx(record["loss"] - bf16["loss"], abs=1e-12)
        assert values["final/loss"] == record["loss"]


# ----------------------------------------------------------------------------- fit --wandb


@pytest.mark.slow
def test_fit_run_logs_the_law_with_intervals_and_plots_and_per_run_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure
    from qat_sweep.analysis.wandb_log import log_fit, predicted_deltas, write_predictions

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    png = tmp_path / "delta_vs_N.png"
    Figure().savefig(png)
    params = {"k": 2.0, "gamma_N": 0.3, "gamma_D": 0.1, "gamma_G": 0.5}
    result = {
        "base": {"params": {"A": 400.0, "E": 1.7}, "ci95": {"A": [300.0, 500.0]}},
        "delta": {"w4a4/int4": {"params": params, "ci95": {}, "rel_error": 0.05}},
        "settings": {"seed": 0},
    }
    table = pd.DataFrame(
        [
            {"run_key": "q", "sweep": SWEEP, "scheme": "w4a4", "format": "int4", "n_params": 1e6,
             "tokens": 2e7, "G": 128.0, "delta": 0.05},
            {"run_key": "b", "sweep": SWEEP, "scheme": "bf16", "format": "bf16", "n_params": 1e6,
             "tokens": 2e7, "G": float("nan"), "delta": float("nan")},
            {"run_key": "u", "sweep": SWEEP, "scheme": "w4a4", "format": "fp4", "n_params": 1e6,
             "tokens": 2e7, "G": 128.0, "delta": 0.07},  # no fp4 fit: no prediction
        ]
    )  # fmt: skip
    assert log_fit("ent/proj", result, table, {"delta_vs_N": png}, out_dir=tmp_path)
    [wandb_file] = offline_files(tmp_path)  # beside the fit's outputs, where sync looks
    summary = json.loads(leet(wandb_file, "--summary"))["summary"]
    assert (summary["base/A"], summary["base/A_ci95_lo"], summary["base/A_ci95_hi"]) == (
        400.0,
        300.0,
        500.0,
    )
    assert (
        summary["delta/w4a4/int4/gamma_G"] == 0.5 and summary["delta/w4a4/int4/rel_error"] == 0.05
    )
    assert "plots" in summary and "runs" in summary  # the gallery the workspace shows, the table
    lines = [json.loads(line) for line in leet(wandb_file).splitlines()]
    header = next(line["run"] for line in lines if line["type"] == "run")
    assert (header["run_group"], header["job_type"]) == (SWEEP, "fit")  # inside the workspace

    predictions = predicted_deltas(result, table)
    assert set(predictions) == {"q"}
    assert predictions["q"]["fit/law"] == "paper" and summary["delta/w4a4/int4/law"] == "paper"
    expected = law(params, 1e6, 2e7, 128)
    assert predictions["q"]["fit/predicted_delta"] == pytest.approx(expected, rel=1e-12)
    assert predictions["q"]["fit/residual"] == pytest.approx(0.05 - expected, rel=1e-12)
    api = RecordingApi(monkeypatch)
    write_predictions(None, "proj", SWEEP, predictions)
    assert api.named("update_summary") == [
        ("update_summary", f"team/proj/{wandb_id(SWEEP, 'q')}", predictions["q"])
    ]


# ----------------------------------------------------------------------------- workspace


def panels_of(workspace) -> dict[str, list]:
    return {section.name: section.panels for section in workspace.sections}


@pytest.mark.slow
def test_workspace_panels_read_what_the_runs_log(
    sweep_runs: dict[str, dict],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    from qat_sweep.commands.wandb_workspace import main as workspace_main
    from qat_sweep.sweep.plan import plan_sweep
    from qat_sweep.sweep.workspace import BF16_COLOUR, build_workspace

    runs = plan_sweep("demo", strict=False)
    workspace = build_workspace("demo", "lab", "law", runs)
    sections = panels_of(workspace)
    assert list(sections) == [
        "Twins: each quantized run beside its BF16 twin",
        "Delta vs N at each D",
        "Delta vs D at each N",
        "Delta vs G in each (N, D) cell",
        "Fit: predicted beside measured delta",
        "FC2 input and the other quantization sites",
    ]
    # every history metric a line plot draws is one the trainer logs (metrics.jsonl mirrors it)
    channel = sweep_runs["channel"]
    logged = set().union(
        *(json.loads(line) for line in (run_dir_of(channel) / "metrics.jsonl").open())
    )
    lines = [p for panels in sections.values() for p in panels if isinstance(p, wr.LinePlot)]
    assert all(p.x == "tokens" and set(p.y) <= logged for p in lines), [p.y for p in lines]
    assert {"quant/fc2/kurtosis", "quant/fc2/act_nmse"} <= {y for p in lines for y in p.y}
    twin_scatter = sections["Twins: each quantized run beside its BF16 twin"][0]
    assert (twin_scatter.x, twin_scatter.y) == (
        wr.SummaryMetric("final/bf16_loss"),
        wr.SummaryMetric("final/loss"),
    )
    # the scatter axes are the flat identity in the run config and, per facet, a summary key
    # only the runs of that facet carry; no log y axis drops a negative delta
    config, summary = inspect(channel)["config"], inspect(channel)["summary"]
    scatters = [p for panels in sections.values() for p in panels if isinstance(p, wr.ScatterPlot)]
    assert not any(p.log_y for p in scatters)
    facets = {
        title: [p for p in sections[title]]
        for title in (
            "Delta vs N at each D",
            "Delta vs D at each N",
            "Delta vs G in each (N, D) cell",
        )
    }
    assert [len(panels) for panels in facets.values()] == [3, 3, 9]  # 3 D, 3 N, 9 cells
    for panels, axis in zip(facets.values(), ("n_params", "tokens", "group_elems"), strict=True):
        assert all(p.x == wr.Config(axis) and axis in config for p in panels)
    # the channel run (0.2M, 20480 tokens) carries its delta in exactly its three facets
    facet_keys = {k for k in summary if k.startswith("facet/")}
    assert facet_keys == {
        "facet/delta@D=20.48K",
        "facet/delta@N=0.2M",
        "facet/delta@N=0.2M,D=20.48K",
    }
    assert all(summary[k] == summary["final/delta"] for k in facet_keys)
    *_, media = sections["Fit: predicted beside measured delta"]
    assert media.media_keys == ["plots"]  # the key log_fit writes its figures under
    # filtered to the sweep's group (the runs' and the fit run's); coloured by format and G
    model = workspace._to_model().model_dump(by_alias=True, exclude_none=True)
    runset = model["spec"]["section"]["runSets"][0]
    [flt] = runset["filters"]["filters"]
    assert (flt["key"], flt["op"], flt["value"]) == (
        {"section": "run", "name": "group"},
        "=",
        "demo",
    )
    colours = model["spec"]["section"]["customRunColors"]
    assert len(colours) == len(runs) == 42
    colour = {
        (r.scheme, r.format, str(r.group_size)): colours[wandb_id("demo", r.run_key)] for r in runs
    }
    assert len(colour) == 1 + 3 + 2  # bf16, int4 x {8, 32, channel}, fp4 x {32, channel}
    assert colour[("bf16", "bf16", "None")] == BF16_COLOUR
    assert len(set(colour.values())) == len(colour)  # every (format, G) has its own colour
    assert len(model["spec"]["section"]["panelBankConfig"]["sections"]) == 6

    api = RecordingApi(monkeypatch)
    assert workspace_main(["sweep=demo", "--entity", "lab", "--project", "law"]) == 0
    [(_, saved)] = api.named("save_workspace")
    assert isinstance(saved, ws.Workspace) and (saved.entity, saved.project) == ("lab", "law")
    assert "https://wandb.example/lab/law?nw=abc" in capsys.readouterr().out
    assert workspace_main(["sweep=nosuch", "--entity", "lab", "--project", "law"]) == 2
    assert "unknown sweep 'nosuch'" in capsys.readouterr().err
    # the preview: no key, no server, the same workspace as a file a person reads
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "spec.json"
    assert workspace_main(["sweep=demo", "--dry-run", "--out", str(out)]) == 0
    assert "nothing was sent" in capsys.readouterr().out
    spec = json.loads(out.read_text())
    assert [s["name"] for s in spec["sections"]] == list(sections)
    first = spec["sections"][0]["panels"][0]
    assert first["x"] == "summary:final/bf16_loss" and first["y"] == "summary:final/loss"
    assert len(spec["colours"]["runs"]) == 42
    assert {c["colour"] for c in spec["colours"]["runs"].values() if c["scheme"] == "bf16"} == {
        BF16_COLOUR
    }
    assert len(api.named("save_workspace")) == 1  # the dry run saved nothing


# ----------------------------------------------------------------------------- plan membership


def test_plan_gives_every_run_its_subgrid_and_holdout_without_changing_run_keys(
    tmp_path: Path,
) -> None:
    from qat_sweep.config.compose import run_key
    from qat_sweep.sweep.plan import holdout_keys, plan_sweep

    sweep = tmp_path / "member.yaml"
    sweep.write_text(
        """
overrides: [data=demo, logger=none]
holdout: [big]
subgrids:
  small: {model: 0.2M, tokens: 8192, quant: w4a4, quant.group_size: [16, 32]}
  big: {model: 0.2M, tokens: 16384, quant: w4a4, quant.group_size: 16}
"""
    )
    runs = plan_sweep(str(sweep), runs_root=tmp_path / "runs", strict=False)
    membership = {r.run_key: r.overrides[-2:] for r in runs}
    held = {key for key, (_, flag) in membership.items() if flag == "holdout=true"}
    assert held == holdout_keys(str(sweep)) and len(held) == 2  # big's run and its BF16 twin
    assert {r.subgrid for r in runs} == {"small", "big", "bf16_twins"}
    for run in runs:
        assert membership[run.run_key][0] == f'subgrid="{run.subgrid}"'
        cfg = compose_run(run.overrides)
        assert run_key(cfg) == run.run_key  # plan membership stays out of the identity
        assert (cfg.subgrid, cfg.holdout) == (run.subgrid, run.run_key in held)


def test_per_run_predictions_follow_the_selected_law() -> None:
    """fit/predicted_delta is the selected law's (here the levelling law), named in fit/law."""
    from qat_sweep.analysis.wandb_log import fit_summary, predicted_deltas

    params = {"k": 2.0, "gamma_N": 0.3, "gamma_D": 0.1, "gamma_G": 0.5, "c": 10.0}
    result = {
        "base": {"params": {"A": 400.0, "alpha": 0.3, "E": 1.7}, "ci95": {}},
        "delta": {"w4a4/int4": {"params": params, "ci95": {}, "law": "levelled_D"}},
    }
    table = pd.DataFrame([{"run_key": "q", "scheme": "w4a4", "format": "int4", "n_params": 1e6,
                           "tokens": 2e8, "G": 128.0, "group_size": "128", "delta": 0.05}])  # fmt: skip
    got = predicted_deltas(result, table)["q"]
    d_eff = 2e8 / (1 + 2e8 / (10.0 * 1e6))
    want = 2.0 * d_eff**0.1 * 7.0**0.5 / 1e6**0.3
    assert got["fit/law"] == "levelled_D" and got["fit/predicted_delta"] == pytest.approx(want)
    assert fit_summary(result)["delta/w4a4/int4/law"] == "levelled_D"
