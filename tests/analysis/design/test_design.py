"""design / suggest / decide: the simulated refit is fit's estimator, the criterion
agrees with simulation, suggest's sweep file holds exactly its runs, decisions solve their
equations, and bad input exits 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qat_sweep.analysis.collect import build_table, pair_deltas, twin_index
from qat_sweep.analysis.design import benchmark as bench
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.design.truth import truth_prior
from qat_sweep.analysis.law.formulas import DELTA_PARAMS
from qat_sweep.analysis.pipeline import Settings, run_fit
from qat_sweep.analysis.predict import SavedFit, predict_point

from qat_sweep.cli import main as cli_main
from qat_sweep.commands.fit import main as fit_main

TARGET = "model=973M tokens=200B scheme=w4a4 format=int4 group_size=128"
TABLE_COLUMNS = ["run_key", "model", "n_params", "tokens", "scheme", "format", "group_size",
                 "lr", "seed", "hidden_size", "holdout"]  # fmt: skip


@pytest.fixture(scope="module")
def paper_runs() -> pd.DataFrame:
    return sim.grid_runs("paper")


def _table(runs: pd.DataFrame, losses: np.ndarray) -> pd.DataFrame:
    return runs[TABLE_COLUMNS].assign(loss=losses)


def _fit_dir(runs, mask: np.ndarray, out: Path, seed=0, noise=0.005, boot=0) -> Path:
    """`qat-sweep fit` on the masked runs (plan run keys), losses drawn from the paper prior."""
    part = runs[mask].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    loss = sim.true_losses(sim.paper_prior(), part) + rng.normal(0, noise, len(part))
    out.mkdir(parents=True, exist_ok=True)
    _table(part, loss).to_csv(out / "table.csv", index=False)
    argv = [
        "--table",
        str(out / "table.csv"),
        "--out",
        str(out),
        "--bootstrap",
        str(boot),
        "--no-plots",
    ]
    assert fit_main(argv) == 0
    return out


def _json(capsys, argv: list[str]) -> dict:
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- design


def test_fast_refit_is_fits_estimator(paper_runs):
    """refit_many == pipeline.run_fit (what `qat-sweep fit` runs) on the same simulated records."""
    prior = sim.paper_prior()
    truth = sim.true_losses(prior, paper_runs)
    losses = sim.draw_losses(prior, paper_runs, 0.02, 2, np.random.default_rng(4))
    refits = sim.refit_many(paper_runs, losses, truth)
    # these draws exercise identify.py: sweep 0 leaves gamma_G of w4a16 out (std error > 0.3)
    assert np.isnan(refits.delta["w4a16/int4"][0, 3]) and np.isfinite(
        refits.delta["w4a16/int4"][1, 3]
    )
    for s in range(2):
        table = pair_deltas(build_table(_table(paper_runs, losses[s]).to_dict("records")))
        res = run_fit(table, [], Settings(bootstrap=0)).result
        base = [res["base"]["params"][p] for p in ("A", "alpha", "B", "beta", "E")]
        np.testing.assert_allclose(refits.base[s], base, rtol=1e-3)
        assert set(refits.delta) >= set(res["delta"])
        for key, fit in res["delta"].items():
            paper = fit["laws"]["paper"]["params"]  # refit_many fits the prior's law: the paper's
            want = [np.nan if paper[p] is None else paper[p] for p in DELTA_PARAMS]
            np.testing.assert_allclose(refits.delta[key][s], want, rtol=1e-5, atol=1e-7)


def test_design_answers_gamma_d_and_drop(capsys):
    """Paper grid at noise 0.01: gamma_D of W4A4 is not resolved; without 100B it is worse."""
    common = [
        "design",
        "sweep=paper",
        "--sims",
        "60",
        "--noise",
        "0.01",
        "--json",
        "--target",
        TARGET,
    ]
    full = _json(capsys, common)
    drop = _json(capsys, [*common, "--drop", "tokens=100B"])
    g_d = full["params"]["w4a4/int4"]["gamma_D"]
    # the answer: identified (fit keeps it) but not pinned down, its interval ~2.5x its value
    assert g_d["identified"] == 1.0 and g_d["rel_width"] > 1.5 and g_d["ci95"][0] < 0.02
    assert g_d["ci95"][0] < 0.0745 < g_d["ci95"][1]
    assert drop["params"]["w4a4/int4"]["gamma_D"]["width"] > 1.3 * g_d["width"]
    assert drop["grid"]["gpu_hours"] < full["grid"]["gpu_hours"]
    assert full["grid"]["runs"] == 289 and full["grid"]["holdout_runs"] == 12
    target = full["targets"][0]["delta"]
    assert target["ci95"][0] < target["truth"] < target["ci95"][1]
    assert drop["targets"][0]["delta"]["width"] > target["width"]


def test_expected_width_scales_with_noise(paper_runs):
    """At small noise the estimator is linear in the noise: half the noise, half the width."""
    runs = paper_runs[paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"])].reset_index(drop=True)
    widths = [sim_width(runs, noise)["w4a4/int4"]["gamma_N"]["width"] for noise in (0.0005, 0.001)]
    assert widths[1] / widths[0] == pytest.approx(2.0, rel=0.1)


def sim_width(runs, noise):
    from qat_sweep.analysis.design.expected import run_design

    return run_design(runs, sim.paper_prior(), noise, 100, seed=3)["params"]


def test_linearised_criterion_matches_simulation(paper_runs):
    """suggest's variance of log delta-hat agrees with simulated refits (independent of it)."""
    from qat_sweep.analysis.design.criterion import Runs, TargetState, features, rel_width

    target = sim.parse_target(TARGET)
    noise = 0.002
    mine = paper_runs[~paper_runs["holdout"] & (paper_runs["fit_key"] == "w4a4/int4")]
    law = sim.paper_prior().delta["w4a4/int4"]
    state = TargetState.start(
        features(target.n_params, target.tokens, target.G)[0], Runs.of(mine, law), noise
    )
    predicted = float(rel_width(state.variance()))
    mask = (
        paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"]) & ~paper_runs["holdout"]
    ).to_numpy()
    simulated = bench.expected_width(sim.paper_prior(), paper_runs, mask, target, noise, 200)
    assert predicted == pytest.approx(simulated, rel=0.15)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--drop", "tokens=7B"], "matches no run"),
        (["--drop", "colour=red"], "unknown key 'colour' in 'colour=red'; allowed: "),
        (["--target", "model=973M tokens=-5"], "tokens=-5: not a count"),
        (["--target", "model=973M tokens=0"], "tokens=0: must be a finite number > 0"),
        (["--target", "model=973M tokens=1e20"], "outside any sensible range"),
        (["--target", "n_params=1e15 tokens=20B"], "outside any sensible range"),
        (["--target", "model=973M tokens=20B group_size=1"], "need 1 < G"),
        (["--target", "model=973M tokens=20B scheme=w4a4 format=fp8"], "fits no delta law"),
        (["--noise", "-1"], "--noise"),
        (["--prior", "/nonexistent"], "--prior"),
    ],
)
def test_design_bad_input_exits_2(argv, message, capsys):
    assert cli_main(["design", "sweep=paper", "--sims", "10", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_design_unknown_sweep_exits_2(capsys):
    assert cli_main(["design", "sweep=nope"]) == 2
    assert "unknown sweep 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- suggest


@pytest.fixture(scope="module")
def seed_sweep(paper_runs, tmp_path_factory) -> tuple[Path, str]:
    """Records of the seed design in a runs root, fitted with `fit sweep=paper`: the real flow."""
    from qat_sweep.analysis.design.synth import table_to_records

    from qat_sweep.common import write_json_atomic

    tmp = tmp_path_factory.mktemp("seedsweep")
    mask = bench.seed_mask(paper_runs.assign(twin=twin_index(paper_runs)))
    mask &= paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"]).to_numpy()
    part = paper_runs[mask].reset_index(drop=True)
    loss = sim.true_losses(sim.paper_prior(), part)
    loss += np.random.default_rng(0).normal(0, 0.005, len(part))
    for record in table_to_records(_table(part, loss), sweep="paper"):
        write_json_atomic(tmp / "runs" / "paper" / record["run_key"] / "result.json", record)
    root = f"paths.runs={tmp / 'runs'}"
    argv = ["sweep=paper", root, "--out", str(tmp / "fit"), "--bootstrap", "0", "--no-plots"]
    assert fit_main(argv) == 0
    return tmp / "fit", root


def test_suggest_writes_exactly_its_runs(seed_sweep, tmp_path, capsys):
    from qat_sweep.sweep.plan import plan_sweep

    fit, root = seed_sweep
    out = tmp_path / "next"
    res = _json(capsys, ["suggest", "--fit", str(fit), "sweep=paper", root, "--target", TARGET,
                         "--k", "3", "--out", str(out), "--json"])  # fmt: skip
    quant = [r for r in res["runs"] if "twin_of" not in r]
    assert len(quant) == 3 and all(r["scheme"] == "w4a4" and r["format"] == "int4" for r in quant)
    statuses = {r.run_key: r.status for r in plan_sweep("paper", [root], strict=False)}
    done = {k for k, v in statuses.items() if v == "completed"}
    assert len(done) == 12  # the seed design's records: 8 W4A4 runs + 4 twins
    keys = {r["run_key"] for r in res["runs"]}
    assert not keys & done and all(r["status"] == "missing" for r in res["runs"])
    for r in quant:  # every QAT run comes with its BF16 twin, unless that twin is done
        assert r["twin_key"] in keys | done
    widths = [r["expected_gain"]["rel_width_after"] for r in quant]
    assert (
        widths == sorted(widths, reverse=True) and widths[-1] < res["targets"][0]["rel_width_now"]
    )
    planned = plan_sweep(res["sweep_file"], strict=False)  # the written sweep file, re-planned
    assert {r.run_key for r in planned} == keys | {r["twin_key"] for r in quant}
    assert {str(r.run_dir.parent) for r in planned} == {root.split("=", 1)[1] + "/paper"}


def test_suggest_off_grid_proposes_runs_the_grid_lacks(seed_sweep, tmp_path, capsys):
    """--off-grid: candidates around the target that the paper grid does not hold, planned
    as plan plans them, written to a sweep file that plans to exactly those runs."""
    from qat_sweep.sweep.plan import plan_sweep

    fit, root = seed_sweep
    argv = ["suggest", "--fit", str(fit), "sweep=paper", root, "--target", TARGET, "--k", "4",
            "--out", str(tmp_path), "--off-grid"]  # fmt: skip
    res = _json(capsys, [*argv, "--json"])
    grid = {r.run_key for r in plan_sweep("paper", [root], strict=False)}
    off = [r for r in res["runs"] if r["off_grid"]]
    assert off and not {r["run_key"] for r in off} & grid
    assert all(r["run_key"] in grid for r in res["runs"] if not r["off_grid"])
    quant = [r for r in off if "twin_of" not in r]
    assert all(r["scheme"] == "w4a4" and r["format"] == "int4" for r in quant)
    # between the grid's models and the target (973M), at the sweep's own data and twins
    assert {r["model"] for r in quant} <= {"145M", "297M", "595M", "973M"}
    planned = {r.run_key for r in plan_sweep(res["sweep_file"], strict=False)}
    assert planned == {r["run_key"] for r in res["runs"]} | {r["twin_key"] for r in quant}
    assert res["targets"][0]["rel_width_after"] < res["targets"][0]["rel_width_now"]
    assert cli_main(argv) == 0
    assert "* off the sweep's grid" in capsys.readouterr().out


def test_suggest_budget(seed_sweep, tmp_path, capsys):
    fit, root = seed_sweep
    res = _json(capsys, ["suggest", "--fit", str(fit), "sweep=paper", root, "--target", TARGET,
                         "--budget", "500", "--out", str(tmp_path), "--json"])  # fmt: skip
    assert 0 < res["gpu_hours"] <= 500
    assert res["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in res["runs"]))


def test_suggest_not_identifiable_says_which_runs(paper_runs, tmp_path, capsys):
    mask = bench.seed_mask(paper_runs.assign(twin=twin_index(paper_runs)))
    mask &= (paper_runs["tokens"] == 10e9).to_numpy()  # one D: gamma_D cannot be fitted
    fit = _fit_dir(paper_runs, mask, tmp_path / "fit")
    assert cli_main(["suggest", "--fit", str(fit), "sweep=paper", "--target", TARGET]) == 2
    err = capsys.readouterr().err
    assert "gamma_D of w4a4/int4 not identifiable" in err
    # identify.py's reason and advice, then this sweep's open runs that vary D on their own
    assert "gamma_D: single D value in the data" in err and "would separate gamma_D" in err
    assert "63 such runs not done (tokens = 2e+10, 5e+10, 1e+11)" in err and "D20B_w4a4" in err


def test_suggest_no_remaining_runs(paper_runs, tmp_path, capsys):
    mask = (
        ~paper_runs["holdout"].to_numpy()
        & paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"]).to_numpy()
    )
    fit = _fit_dir(paper_runs, mask, tmp_path / "fit")
    assert cli_main(["suggest", "--fit", str(fit), "sweep=paper", "--target", TARGET]) == 2
    assert "no remaining runs of w4a4/int4" in capsys.readouterr().err


@pytest.mark.slow
def test_suggest_loop_beats_random_and_reaches_full_grid(paper_runs):
    """Hidden truth, paper grid as candidates: suggest -> run -> refit from a seed design."""
    truth, target = bench.hidden_truth(), sim.parse_target(bench.TARGET)
    grid = bench.candidate_grid()
    full = bench.expected_width(truth, grid, np.ones(len(grid), bool), target, 0.01, 100)
    half = float(paper_runs.loc[~paper_runs["holdout"], "gpu_hours"].sum()) / 2
    # Widths from 100 simulated sweeps carry about 10 % Monte Carlo error (seed 0's last
    # design scores 1.107 x full with 100, 1.008 with 400): "reached" means within 12 %.
    reach = 1.12 * full
    firsts = []
    for seed in (0, 1):
        s = bench.suggest_curve(truth, grid, target, 0.01, seed, 4, 100, full, half)
        # the loop stops at the full grid's width or when no run is predicted to help
        assert s.width[-1] <= reach and s.gpu_hours[-1] <= half
        # where it first reaches that width, random runs of the same cost are wider (at the
        # plateau both are nearly the whole grid and agree within the Monte Carlo error)
        first = next(i for i, width in enumerate(s.width) if width <= reach)
        r = bench.random_curve(truth, grid, target, 0.01, seed, s.gpu_hours[first : first + 1])
        firsts.append((s.width[first], r.width[-1]))
    assert np.mean([s for s, _ in firsts]) < np.mean([r for _, r in firsts])


# ---------------------------------------------------------------- decide


@pytest.fixture(scope="module")
def paper_fit(paper_runs, tmp_path_factory) -> Path:
    mask = np.ones(len(paper_runs), bool)
    return _fit_dir(paper_runs, mask, tmp_path_factory.mktemp("paperfit"), noise=0.002, boot=200)


def test_decide_solves_its_equations(paper_fit, capsys):
    saved = SavedFit.load(paper_fit)
    res = _json(capsys, ["decide", "--fit", str(paper_fit), "model=595M", "tokens=100B",
                         "scheme=w4a4", "group_size=128", "--bits", "4.3", "--tolerance", "0.06", "--json"])  # fmt: skip
    bg = res["best_group_size"]
    assert bg["group_size"] == "64" and bg["bits_per_weight"] == 4.25  # smallest G within 4.3 bits
    assert bg["allowed"][0] == "64" and "32" not in bg["allowed"]
    tt = res["tokens_to_tolerance"]
    at = predict_point(saved, res["n_params"], tt["tokens"], "w4a4/int4", 128, 1536)
    assert at["delta"]["value"] == pytest.approx(0.06, rel=1e-6)
    assert tt["ci95"][0] < tt["tokens"] < tt["ci95"][1]
    # FP4 is one (N, D) cell: its gamma_N is not identifiable, so there is no crossover at 595M
    cx = res["int4_vs_fp4"]
    assert not cx["available"] and "w4a4/fp4 gamma_N, gamma_D" in cx["missing"]
    assert "w4a4/fp4 gamma_N not identifiable: single N value in the data" in cx["warnings"]
    eff = res["eff_multiplier"]
    assert eff["ci95"][0] <= eff["value"] <= eff["ci95"][1] < 1
    assert "## Decisions" in (paper_fit / "report.md").read_text()
    assert saved.result["decisions"] and saved.result["decisions"][0]["setting"]


def test_decide_gives_no_winner_where_an_exponent_is_not_identifiable(paper_runs, tmp_path, capsys):
    """One token count: gamma_D cannot be fitted, so neither the tokens at a tolerance nor any
    choice across settings has an answer, and every printed number stays short."""
    runs = paper_runs
    int4 = (runs["fit_key"] == "w4a4/int4") & (runs["tokens"] == 10e9)
    mask = (int4 | runs["fit_key"].isin(["bf16/bf16", "w4a4/fp4"])) & ~runs["holdout"]
    fit = _fit_dir(runs, mask.to_numpy(), tmp_path / "fit", boot=30)
    capsys.readouterr()
    argv = ["decide", "--fit", str(fit), "model=595M", "tokens=100B", "--bits", "5"]
    res = _json(capsys, [*argv, "--json"])
    tt, bf, bg = res["tokens_to_tolerance"], res["best_format"], res["best_group_size"]
    assert tt["tokens"] is None and "(w4a4/int4 gamma_D)" in tt["undecided"]
    assert not bf["available"] and "w4a4/int4 gamma_D" in bf["missing"]
    assert any(w.startswith("w4a4/int4 gamma_D not identifiable: single D") for w in tt["warnings"])
    # gamma_G varies on its own at one D: the choice of G stands, with its share of draws
    assert bg["group_size"] == "16" and 0 < bg["share_of_draws"] <= 1
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "tokens at which delta reaches 0.05 (G = 128): no answer" in out
    assert not re.search(r"[0-9][0-9,]{12,}", out)


def test_decide_without_draws_gives_no_interval(paper_fit):
    """A fit without bootstrap draws: point decisions, no zero-width intervals, a caveat."""
    from qat_sweep.analysis.decide import Question, decisions

    saved = SavedFit.load(paper_fit)
    res = decisions(SavedFit(saved.result, {}), Question(595e6, 100e9, 1536, "w4a4/int4"))
    bg, tt = res["best_group_size"], res["tokens_to_tolerance"]
    assert bg["group_size"] == "64" and bg["share_of_draws"] is None
    assert tt["tokens"] > 0 and tt["ci95"] is None and res["eff_multiplier"]["ci95"] is None
    assert "no bootstrap interval (none drawn, or the fit cannot give one)" in tt["warnings"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model=595M", "tokens=100B", "--bits", "4.0"], "no group size fits"),
        (["model=595M", "tokens=100B", "scheme=w4a4", "format=fp8"], "no delta fit for w4a4/fp8"),
        (["model=595M", "tokens=100B", "scheme=bf16"], "not bf16"),
        (["model=595M", "tokens=1e30"], "outside any sensible range"),
        (["model=595M", "tokens=100B", "--tolerance", "-1"], "--tolerance"),
        (["model=595M"], "tokens="),
    ],
)
def test_decide_bad_input_exits_2(paper_fit, argv, message, capsys):
    assert cli_main(["decide", "--fit", str(paper_fit), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_design_prior_from_a_fit(paper_fit, tmp_path, capsys):
    """--prior DIR simulates from that fit's law; the default noise is its BF16 residual SD
    (corrected for the fitted parameters) times the median BF16 loss of its runs, and a
    parameter on its bound is a warning."""
    saved = SavedFit.load(paper_fit)
    argv = ["design", "sweep=paper", "--prior", str(paper_fit), "--sims", "10", "--json"]
    res = _json(capsys, argv)
    assert res["prior"]["source"].startswith("fit ") and res["prior"]["warnings"] == []
    runs = pd.read_csv(paper_fit / "runs.csv")
    typical = runs.loc[(runs["scheme"] == "bf16") & runs["excluded"].isna(), "loss"].median()
    base = saved.result["base"]
    n, p = base["identifiability"]["n_cells"], base["identifiability"]["n_params"]
    expected = base["resid_log_sd"] * np.sqrt(n / (n - p)) * typical
    assert res["noise"] == pytest.approx(expected) and res["noise"] > 0
    fitted = saved.result["delta"]["w4a4/int4"]["params"]["gamma_G"]
    assert res["params"]["w4a4/int4"]["gamma_G"]["truth"] == pytest.approx(fitted)
    # the same fit as if its E sat on a bound (the demo's real fit has E = 0)
    result = {**saved.result, "base": {**base, "bound_hits": ["E"]}}
    (tmp_path / "fit.json").write_text(json.dumps(result))
    res = _json(capsys, [*argv[:3], str(tmp_path / "fit.json"), *argv[4:]])
    assert res["prior"]["warnings"] == [
        f"the prior's BF16 law has E = {base['params']['E']:.3g} on its bound: the bound, not "
        "the data, set it, and every simulated sweep draws from that value"
    ]
    # no runs.csv beside it: the law at the fitted range's centre stands for the typical loss
    assert res["noise"] == pytest.approx(expected, rel=0.3)
    assert "at the fitted range's centre" in " ".join(res["prior"]["notes"])


def test_suggest_two_targets_and_a_budget_too_small(seed_sweep, tmp_path, capsys):
    fit, root = seed_sweep
    small = "model=74M tokens=10B scheme=w4a4 format=int4 group_size=64"
    base = ["suggest", "--fit", str(fit), "sweep=paper", root, "--out", str(tmp_path)]
    res = _json(capsys, [*base, "--target", TARGET, "--target", small, "--k", "2", "--json"])
    assert [t["target"] for t in res["targets"]] == [
        "973M/200B w4a4/int4 G=128",
        "74M/10B w4a4/int4 G=64",
    ]
    assert all(t["rel_width_after"] < t["rel_width_now"] for t in res["targets"])
    assert cli_main([*base, "--target", TARGET, "--budget", "1"]) == 2
    assert (  # the refusal says why: the cheapest run the budget would have to pay
        "--budget 1 GPU-hours is below the cheapest remaining run of w4a4/int4 (25.3 GPU-hours"
        in capsys.readouterr().err
    )


# ---------------------------------------------------------------- which law holds


def _selection(paper_runs, truth: str, noise: float, cell_noise: float = 0.0, sims: int = 100):
    """How often fit's law comparison picks each law over simulated W4A4 INT4 paper sweeps."""
    from qat_sweep.analysis.design.expected import run_design

    runs = paper_runs[paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"])].reset_index(drop=True)
    prior = truth_prior(sim.paper_prior(), truth, runs)
    res = run_design(runs, prior, noise, sims, seed=0, cell_noise=cell_noise, select=True)
    return res["selection"]["w4a4/int4"]


@pytest.mark.slow
def test_selection_finds_a_levelling_law_bent_inside_the_grid(paper_runs):
    """Law selection by simulation: a levelling-off truth (bend at D/N = 150, inside the paper grid's 17
    to 1350) selects a levelling-off law in >= 80 % of sweeps at noise 0.01 per run."""
    item = _selection(paper_runs, "levelled_D:gamma_D=0.2,c=150", 0.01)
    assert item["truth"] == "levelled_D" and item["sweeps"] == 100
    assert item["levelling_off_rate"] >= 0.8, item["picks"]


@pytest.mark.slow
def test_selection_keeps_the_papers_law_where_the_grid_resolves_its_d_term(paper_runs):
    """Data drawn from the paper's law select it (or a law containing it) in >= 90 % of sweeps
    under the synthetic tables' noise (0.002 per run, 0.01 shared by a cell's twins)."""
    item = _selection(paper_runs, "paper", 0.002, cell_noise=0.01)
    assert item["hit_rate"] >= 0.9, item["picks"]


@pytest.mark.slow
def test_selection_keeps_the_papers_law_at_noise_0005(paper_runs):
    """Independent noise of 0.005 per run, twins included: the paper's law is kept (or a law
    containing it) in >= 90 % of sweeps, because another law must beat it by one SE."""
    item = _selection(paper_runs, "paper", 0.005)
    assert item["hit_rate"] >= 0.9, item["picks"]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="the wanted >= 90 % at 0.01 per run fails; on the paper grid W4A4's gamma_D is then "
    "only ~2-3 standard errors from 0, so even in-sample AIC prefers the paper's law over no_D "
    "in ~76 % of sweeps and the held-out rule keeps it in ~63 % (docs/laws.md)",
)
def test_selection_keeps_the_papers_law_at_noise_001(paper_runs):
    assert _selection(paper_runs, "paper", 0.01)["hit_rate"] >= 0.9


def test_design_truth_cli(capsys):
    argv = [
        "design",
        "sweep=paper",
        "--truth",
        "levelled_D:c=150",
        "--sims",
        "10",
        "--noise",
        "0.005",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "which law fit selects" in out and "truth levelled_D" in out
    assert "w4a4/int4: truth levelled_D (fitted to the prior's delta, then c=150)" in out
    assert cli_main([*argv[:3], "levelled_D:q=1", "--sims", "10"]) == 2
    assert "q not parameters of levelled_D" in capsys.readouterr().err
    assert cli_main([*argv[:3], "cubic", "--sims", "10"]) == 2
    assert "unknown law 'cubic'" in capsys.readouterr().err


def test_decide_follows_the_selected_law(tmp_path, capsys):
    """decide on a fit whose selection is the levelling law: tokens to a tolerance solved on
    that law (and 'never' above its plateau); --law eff_per_G keeps to its fitted group sizes."""
    from qat_sweep.analysis.design.synth import levelling_table

    out = tmp_path / "levelled"
    out.mkdir()
    levelling_table(seed=0).to_csv(out / "table.csv", index=False)
    assert fit_main(["--table", str(out / "table.csv"), "--out", str(out), "--bootstrap", "50",
                     "--no-plots"]) == 0  # fmt: skip
    capsys.readouterr()
    saved = SavedFit.load(out)
    point = ["n_params=1e8", "hidden_size=768", "scheme=w4a4", "format=mxfp4", "group_size=32"]
    tol = predict_point(saved, 1e8, 3e9, "w4a4/mxfp4", 32, 768)["delta"]["value"]
    res = _json(capsys, ["decide", "--fit", str(out), *point, "tokens=10B", "--tolerance",
                         str(tol), "--json"])  # fmt: skip
    assert res["law"] == "levelled_D" and res["law_source"] == "selected"
    tt = res["tokens_to_tolerance"]
    assert tt["law"] == "levelled_D" and tt["tokens"] == pytest.approx(3e9, rel=1e-4)
    assert tt["ci95"][0] <= tt["tokens"] <= tt["ci95"][1]
    never = _json(capsys, ["decide", "--fit", str(out), *point, "tokens=10B", "--tolerance",
                           "0.5", "--json"])["tokens_to_tolerance"]  # fmt: skip
    assert never["tokens"] is None and any("does not reach" in w for w in never["warnings"])
    assert cli_main(["decide", "--fit", str(out), *point, "tokens=10B"]) == 0
    assert "delta law levelled_D (selected by the fit)" in capsys.readouterr().out


def test_decide_with_a_per_group_law_keeps_to_its_groups(paper_fit, capsys):
    res = _json(capsys, ["decide", "--fit", str(paper_fit), "model=595M", "tokens=100B",
                         "scheme=w4a4", "group_size=128", "--bits", "4.3", "--law", "eff_per_G",
                         "--json"])  # fmt: skip
    bg = res["best_group_size"]
    assert res["law"] == "eff_per_G" and set(bg["allowed"]) <= {"32", "64", "128", "256", "channel"}
    assert any("no value at G = 512" in w for w in bg["warnings"])
    assert res["int4_vs_fp4"]["available"] is False  # one value per fitted G: no crossover


def test_suggest_criterion_linearises_the_selected_law(paper_runs):
    """suggest's variance for a levelling-law target agrees with refits of that law."""
    from qat_sweep.analysis.design.criterion import TargetState, rel_width
    from qat_sweep.analysis.design.suggest import fitted_laws
    from qat_sweep.analysis.law.formulas import Points

    target = sim.parse_target(TARGET)
    part = paper_runs[
        paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"]) & ~paper_runs["holdout"]
    ]
    part = part.reset_index(drop=True)
    prior = truth_prior(sim.paper_prior(), "levelled_D:gamma_D=0.2,c=150", part)
    result = {
        "base": {"params": prior.base},
        "delta": {"w4a4/int4": {"law": "levelled_D", "params": prior.delta["w4a4/int4"]}},
    }
    law = fitted_laws(result, [target], part, part)[0]["w4a4/int4"]
    assert law.law.name == "levelled_D"
    state = TargetState.at_target(target, law, part[part["fit_key"] == "w4a4/int4"], 0.002)
    assert len(state.c) == 5  # k, gamma_N, gamma_D, gamma_G and log c
    predicted = float(rel_width(state.variance()))
    losses = sim.draw_losses(prior, part, 0.002, 200, np.random.default_rng(0))
    refits = sim.refit_many(
        part, losses, sim.true_losses(prior, part), laws={"w4a4/int4": "levelled_D"}
    )
    delta = sim.predicted_delta(
        refits.delta["w4a4/int4"], target.n_params, target.tokens, target.G, "levelled_D",
        refits.names["w4a4/int4"], target.group_size,
    )  # fmt: skip
    truth = float(law.delta(Points.at(target.n_params, target.tokens, target.G, 128))[0])
    lo, hi = np.percentile(delta, [2.5, 97.5])
    assert predicted == pytest.approx((hi - lo) / truth, rel=0.15)


def test_suggest_takes_a_loose_exponent_as_zero_and_refuses_a_collinear_one(paper_runs):
    """An exponent the grid varies but the noise leaves loose: the criterion goes on with it
    at 0 (and says so); one the grid ties to another axis: a refusal naming the runs."""
    from qat_sweep.analysis.collect import InputError
    from qat_sweep.analysis.design.suggest import fitted_laws

    target = sim.parse_target(TARGET)
    part = paper_runs[paper_runs["fit_key"].isin(["w4a4/int4", "bf16/bf16"])]
    part = part.reset_index(drop=True).assign(open=~part["holdout"].to_numpy())
    params = {**sim.paper_prior().delta["w4a4/int4"], "gamma_N": None}

    def fit(variation: float) -> dict:
        entry = {"independent_variation": variation, "std_error": 0.4, "why": "loose"}
        delta = {"params": params, "identifiability": {"exponents": {"gamma_N": entry}}}
        return {"base": {"params": sim.paper_prior().base}, "delta": {"w4a4/int4": delta}}

    laws, notes = fitted_laws(fit(1.0), [target], part, part)
    assert laws["w4a4/int4"].params["gamma_N"] == 0.0
    assert notes[0].startswith("gamma_N of w4a4/int4: not identifiable in this fit")
    with pytest.raises(InputError, match="gamma_N of w4a4/int4 not identifiable"):
        fitted_laws(fit(0.01), [target], part, part)
