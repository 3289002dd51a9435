"""Fits on designs like real sweeps: tied N/D/G, binding bounds, exact fits, measured counts,
outliers; and the invariant that every written interval contains its estimate."""

from __future__ import annotations

import numpy as np
import pytest
from qat_sweep.analysis.cells import CELL_RTOL, count_cells, snap
from qat_sweep.analysis.collect import build_table, pair_deltas
from qat_sweep.analysis.design.synth import PRESETS, Truth, synthetic_table
from qat_sweep.analysis.law.base_fit import fit_base, on_bound
from qat_sweep.analysis.law.bootstrap import WIDE_EXPONENT, WIDE_RATIO, bootstrap
from qat_sweep.analysis.law.delta_fit import GAMMA_BOUND, fit_delta, huber_irls
from qat_sweep.analysis.law.identify import OUTLIER_Z
from qat_sweep.analysis.pipeline import Settings, check_intervals, run_fit
from qat_sweep.analysis.predict import SavedFit, predict_point

MODELS = ("74M", "145M", "297M", "595M", "973M")


def _table(runs, **kw):
    return pair_deltas(build_table(synthetic_table(runs=runs, **kw).to_dict("records")))


def _run(model, tokens, scheme="bf16", fmt="bf16", group=None, lr=1e-3):
    return {"model": model, "tokens": tokens, "scheme": scheme, "format": fmt,
            "group_size": group, "lr": lr, "holdout": False}  # fmt: skip


def _tied_design():
    """D/N held near 100 (jittering 97 to 101) and G = hidden size: the public low-bit QAT
    sweeps' shape. Two learning rates per model give replicate twins."""
    rng = np.random.default_rng(0)
    runs = []
    for model in MODELS:
        tokens = float(round(PRESETS[model][0] * 100 * rng.uniform(0.97, 1.01), -6))
        for lr in (1e-3, 1.1e-3):
            runs += [_run(model, tokens, lr=lr), _run(model, tokens, "w4a4", "int4", "channel", lr)]
    return _table(runs, noise=0.002, cell_noise=0.003, seed=1)


def _assert_no_silent_wide_interval(fit_json):
    for name, ci in fit_json["ci95"].items():
        if ci is None:
            continue
        width_ok = (
            ci[1] - ci[0] <= WIDE_EXPONENT if name.startswith(("gamma", "alpha", "beta")) else True
        )
        ratio_ok = ci[0] > 0 and ci[1] / ci[0] <= WIDE_RATIO if name in ("k", "A", "B") else True
        if not (width_ok and ratio_ok):
            assert fit_json["interval_flags"][name].startswith("not identifiable"), (name, ci)


def test_tied_design_flags_exponents_instead_of_huge_intervals():
    outcome = run_fit(_tied_design(), [], Settings(bootstrap=200))
    check_intervals(outcome.result)
    delta = outcome.result["delta"]["w4a4/int4"]
    ident = delta["identifiability"]
    assert ident["condition"] > 50  # the design is nearly singular in (log N, log D, log log2 G)
    gamma_d = ident["exponents"]["gamma_D"]
    assert not gamma_d["separable"] and gamma_d["moves_with"] == "gamma_N"
    assert (
        "refit without it" in gamma_d["action"]
        and "D/N = 20 and 400" in gamma_d["runs_to_separate"]
    )
    assert {"gamma_D", "gamma_G"} <= set(delta["not_identifiable"])
    assert delta["params"]["gamma_D"] is None and delta["ci95"]["gamma_D"] is None
    # What remains is identified: gamma_N carries gamma_N - gamma_D (and G's drift with N).
    lo, hi = delta["ci95"]["gamma_N"]
    assert hi - lo < 0.2 and lo <= delta["params"]["gamma_N"] <= hi
    _assert_no_silent_wide_interval(delta)
    # The BF16 law cannot split A from B along D/N = const either, and says so.
    base = outcome.result["base"]
    assert not base["identifiability"]["N_vs_D"]["separable"]
    assert base["interval_flags"]["A"].startswith("not identifiable: D/N hardly varies")
    _assert_no_silent_wide_interval(base)


def test_bounds_that_bind_hold_in_every_resample():
    """gamma_G = 4.5 lies beyond the [-3, 3] box: the point fit sits on 3, every bootstrap refit
    stays inside the box (the unbounded IRLS went to 5.08) and the interval contains 3."""
    truth = Truth()
    truth.delta["w4a4/int4"] = {**truth.delta["w4a4/int4"], "gamma_G": 4.5}
    runs = [_run(m, d) for m in MODELS[:4] for d in (10e9, 50e9)]
    runs += [_run(m, d, "w4a4", "int4", g) for m in MODELS[:4] for d in (10e9, 50e9) for g in (32, 128, 256)]  # fmt: skip
    table = _table(runs, truth=truth, noise=0.003, cell_noise=0.0, seed=2)
    part = table[table["fit_key"] == "w4a4/int4"].reset_index(drop=True)
    fit = fit_delta(part, "w4a4/int4")
    assert fit.bound_hits == ["gamma_G"] and fit.params["gamma_G"] == pytest.approx(GAMMA_BOUND)
    # The batched box-constrained IRLS reaches the same optimum as lmfit, on the bound.
    design = fit.internal["design"]
    x = design.matrix(part["n_params"], part["tokens"], part["G"])
    lower, upper = design.bounds()
    y = np.log(part["delta"].to_numpy())
    again = huber_irls(x, y, np.ones((1, len(y))), fit.f_scale, np.zeros(x.shape[1]), lower=lower, upper=upper)  # fmt: skip
    assert again[0] == pytest.approx(fit.internal["coef"], abs=1e-5)
    free = huber_irls(x, y, np.ones((1, len(y))), fit.f_scale, np.zeros(x.shape[1]))
    g_col = 1 + design.columns.index("gamma_G")
    assert free[0][g_col] > GAMMA_BOUND + 0.5  # without the box the same data leaves it
    bf16 = table[table["scheme"] == "bf16"].reset_index(drop=True)
    base = fit_base(bf16)
    bootstrap(bf16, part.assign(fit_key="w4a4/int4"), base, {"w4a4/int4": fit}, 300, 0)
    gammas = fit.boot[:, 1:]
    assert np.all(np.abs(gammas[np.isfinite(gammas)]) <= GAMMA_BOUND)
    lo, hi = fit.ci95["gamma_G"]
    assert lo <= fit.params["gamma_G"] <= hi == pytest.approx(GAMMA_BOUND)
    for name, ci in fit.ci95.items():
        if ci is not None:
            assert ci[0] <= fit.params[name] <= ci[1], name


def test_bound_hits_are_relative_to_the_parameter():
    assert on_bound(3.0, 3.0) and on_bound(3.0 - 1e-7, 3.0) and not on_bound(2.99, 3.0)
    assert on_bound(1e-12, 0.0) and not on_bound(0.5, 0.0) and not on_bound(1e-3, 0.0)
    # A = 30 (0.48 in normalised units) was flagged "on its bound" by a 1e-6 x span test.
    truth = Truth()
    truth.base = {**truth.base, "A": 30.0}
    table = synthetic_table(truth, noise=0.0005, cell_noise=0.0, seed=4)
    bf16 = table[(table["scheme"] == "bf16") & ~table["holdout"]].drop_duplicates(
        ["n_params", "tokens"]
    )
    base = fit_base(bf16.reset_index(drop=True))
    assert base.params["A"] == pytest.approx(30.0, rel=0.3) and base.bound_hits == []


def test_exact_fit_gives_no_interval_and_predict_says_why(tmp_path):
    """Two model sizes, one D and one G: two points for k and gamma_N, no interval possible."""
    runs = [_run(m, d) for m in MODELS[:3] for d in (10e9, 20e9)]
    runs += [_run(m, 20e9, "w4a4", "int4", 128) for m in MODELS[:2]]
    outcome = run_fit(_table(runs, seed=3), [], Settings(bootstrap=100))
    delta = outcome.result["delta"]["w4a4/int4"]
    assert delta["identifiability"]["exact_fit"] and delta["ci95"]["gamma_N"] is None
    assert delta["interval_flags"]["gamma_N"].startswith("not identifiable: exact fit")
    from qat_sweep.analysis.pipeline import write_outputs

    write_outputs(outcome, tmp_path)  # runs check_intervals on fit.json and the predictions
    pred = predict_point(SavedFit.load(tmp_path), 3e8, 20e9, "w4a4/int4", 128)
    assert pred["delta"]["ci95"] is None
    assert any("exact fit" in c for c in pred["delta"]["caveats"])
    assert any("exact fit" in w for w in pred["warnings"])


def test_measured_counts_group_into_cells():
    """N and D carrying noise in the 4th digit (+-0.2%) pair, deduplicate, count and hold out
    exactly like the clean grid."""
    clean = synthetic_table(cell_noise=0.003, seed=9)
    noisy = clean.copy()
    rng = np.random.default_rng(0)
    noisy["n_params"] *= 1 + rng.uniform(-2e-3, 2e-3, len(noisy))
    noisy["tokens"] = np.round(noisy["tokens"] * (1 + rng.uniform(-1e-3, 1e-3, len(noisy))), -5)
    assert noisy["n_params"].nunique() == len(noisy)  # every run its own exact N
    a, b = (pair_deltas(build_table(t.to_dict("records"))) for t in (clean, noisy))
    assert (a["excluded"] == "").sum() == (b["excluded"] == "").sum()
    assert count_cells(b[b["excluded"] == ""]) == count_cells(a[a["excluded"] == ""]) == 18
    settings = Settings(bootstrap=0)
    res_a, res_b = (run_fit(t, [], settings).result for t in (a, b))
    for check in ("leave_largest_N_out", "leave_largest_D_out"):
        assert res_b["validation"][check]["n_test"] == res_a["validation"][check]["n_test"] > 20
    for key in ("w4a4/int4", "w16a4/int4"):
        assert res_b["delta"][key]["n_cells"] == res_a["delta"][key]["n_cells"]
        for p in ("gamma_N", "gamma_D", "gamma_G"):
            assert res_b["delta"][key]["params"][p] == pytest.approx(
                res_a["delta"][key]["params"][p], abs=0.01
            )


def test_snap_tolerance():
    values = np.array([74.3e6, 74.31e6, 74.38e6, 144.7e6, 0.0, np.nan])
    out = snap(values)
    assert out[0] == out[1] == out[2] == 74.31e6 and out[3] == 144.7e6
    assert np.isnan(out[4]) and np.isnan(out[5])
    assert snap(np.array([1.0, 1.0 + 2 * CELL_RTOL]))[1] != 1.0


def test_outliers_are_listed_with_their_run_keys():
    clean = synthetic_table(noise=0.001, cell_noise=0.002, seed=5)
    dirty = synthetic_table(noise=0.001, cell_noise=0.002, outliers=2, seed=5)
    hit = set(dirty.loc[dirty["loss"] != clean["loss"], "run_key"])
    assert len(hit) == 2
    outcome = run_fit(pair_deltas(build_table(dirty.to_dict("records"))), [], Settings(bootstrap=0))
    listed = {o["run_key"] for f in outcome.result["delta"].values() for o in f["outliers"]}
    assert hit <= listed
    assert all(abs(o["robust_z"]) > OUTLIER_Z for f in outcome.deltas.values() for o in f.outliers)
    from qat_sweep.analysis.report.html import build_sections

    text = " ".join(t for sec in build_sections(outcome.result) for t in sec.text + sec.details)
    assert all(key in text for key in hit) and "Outliers" in text


def test_check_intervals_refuses_an_interval_beside_its_estimate():
    outcome = run_fit(_tied_design(), [], Settings(bootstrap=50))
    check_intervals(outcome.result)
    outcome.result["delta"]["w4a4/int4"]["ci95"]["gamma_N"] = [4.73, 4.73]
    with pytest.raises(AssertionError, match="gamma_N"):
        check_intervals(outcome.result)


def test_noisy_full_grid_asks_for_seeds_not_for_other_axes():
    """N, D and G each vary on their own (a full 2 x 2 x 2 grid), but the runs' noise is far
    above the gaps: an exponent left loose is blamed on the noise, and the advice is more seeds
    or a wider range, not runs the grid already has."""
    runs = []
    for model in ("74M", "145M"):
        for tokens in (10e9, 20e9):
            runs.append(_run(model, tokens))
            runs += [_run(model, tokens, "w4a4", "int4", g) for g in (32, 256)]
    table = _table(runs, noise=0.03, cell_noise=0.0, seed=3)
    outcome = run_fit(table, [], Settings(bootstrap=50))
    exponents = outcome.result["delta"]["w4a4/int4"]["identifiability"]["exponents"]
    loose = [e for e in exponents.values() if not e["separable"]]
    assert loose, "at this noise some exponent must be left loose"
    for entry in loose:
        assert entry["independent_variation"] > 0.9  # the design separates every axis
        assert "more seeds per cell" in entry["runs_to_separate"]
