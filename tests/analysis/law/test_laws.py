"""Candidate delta laws: one definition each, fitted like the paper's law, compared
on held-out cells, and a selection that finds a levelling-off truth and keeps the paper's."""

from __future__ import annotations

import numpy as np
import pytest
from qat_sweep.analysis.collect import build_table, pair_deltas
from qat_sweep.analysis.design.criterion import features
from qat_sweep.analysis.design.synth import (
    START_FRACTIONS,
    START_TRUTH,
    levelling_table,
    levelling_truth,
    start_fraction_table,
    synthetic_table,
)
from qat_sweep.analysis.law.base_fit import fit_base
from qat_sweep.analysis.law.compare import CRITERIA, START_CRITERION, make_splits, select
from qat_sweep.analysis.law.delta_fit import fit_delta
from qat_sweep.analysis.law.formulas import (
    D_FP_QAT,
    EFF_PER_G,
    LAWS,
    LEVELLED_D,
    NO_D,
    PAPER,
    FittedLaw,
    Points,
    effective_multiplier,
    get_law,
    law_log_delta,
    log_delta,
)
from qat_sweep.analysis.law.law_fit import fit_law
from qat_sweep.analysis.law.start_fractions import pooled_key, start_fraction_groups
from qat_sweep.analysis.pipeline import Settings, check_intervals, run_fit

P = {"k": 0.1582, "gamma_N": 0.2186, "gamma_D": 0.0745, "gamma_G": 0.7779}
BASE = {"A": 237.7042, "alpha": 0.3022}


def _usable(table):
    table = pair_deltas(build_table(table.to_dict("records")))
    return table[(table["excluded"] == "") & ~table["holdout"]]


def test_each_law_is_one_definition_with_its_needs():
    n, d, g = np.array([7e7, 6e8, 6e8]), np.array([1e10, 1e10, 1e11]), np.array([32, 128, 768])
    at = Points.at(n, d, g, ["32", "128", "channel"])
    assert np.allclose(law_log_delta(PAPER, P, at), log_delta(P, n, d, g))
    no_d = {k: v for k, v in P.items() if k != "gamma_D"}
    assert np.allclose(law_log_delta(NO_D, no_d, at), log_delta({**P, "gamma_D": 0.0}, n, d, g))
    # the levelling law is the paper's while D << c N and stops growing once D >> c N
    assert np.allclose(law_log_delta(LEVELLED_D, {**P, "c": 1e12}, at), log_delta(P, n, d, g))
    far = Points.at(1e8, np.array([1e3, 1e4]) * 50 * 1e8, 128)
    flat = np.exp(law_log_delta(LEVELLED_D, {**P, "c": 50.0}, far))
    assert flat[1] / flat[0] == pytest.approx(1.0, abs=1e-3)
    # eff_per_G: delta = A N^-alpha (eff^-alpha - 1), the multiplier effective_multiplier gives
    eff = {"eff[32]": 0.8, "eff[128]": 0.7}
    delta = np.exp(law_log_delta(EFF_PER_G, eff, at, BASE))
    assert delta[0] == pytest.approx(
        BASE["A"] * 7e7 ** -BASE["alpha"] * (0.8 ** -BASE["alpha"] - 1)
    )
    assert effective_multiplier(BASE, 6e8, delta[1]) == pytest.approx(0.7)
    assert np.isnan(delta[2])  # no parameter for per-channel: no value, never a silent one
    assert PAPER.needs() == {"gamma_N": "N", "gamma_D": "D", "gamma_G": "G"}
    assert LEVELLED_D.needs()["c"] == "D/N" and "paper" in LEVELLED_D.nests
    assert EFF_PER_G.params(("32", "channel")) == ("eff[32]", "eff[channel]")
    # suggest's linearisation of the paper's law is its regressors
    grad = FittedLaw(PAPER, P).gradient(at)
    assert np.allclose(grad, features(n, d, g))
    assert set(LAWS) == {"paper", "no_D", "eff_per_G", "levelled_D"}


def test_fit_law_recovers_a_levelling_truth_and_eff_is_consistent():
    table = _usable(levelling_table(noise=0.0002, cell_noise=0.0))
    part = table[table["fit_key"] == "w4a4/mxfp4"].reset_index(drop=True)
    paper = fit_delta(part, "w4a4/mxfp4")
    base = fit_base(table[table["scheme"] == "bf16"].reset_index(drop=True))
    fit = fit_law(part, LEVELLED_D, "w4a4/mxfp4", paper, base.params)
    truth = levelling_truth()["w4a4/mxfp4"]
    assert fit.params["c"] == pytest.approx(truth["c"], rel=0.15)
    assert fit.params["gamma_D"] == pytest.approx(truth["gamma_D"], abs=0.03)
    assert fit.params["gamma_G"] is None and "gamma_G" in fit.not_identifiable  # one G only
    assert fit.stats["rel_error"] < 0.5 * paper.stats["rel_error"]
    eff = fit_law(part, EFF_PER_G, "w4a4/mxfp4", paper, base.params)
    row = part.iloc[[0]]
    delta = eff.internal["predict"](row)[0]
    assert effective_multiplier(base.params, row["n_params"].iloc[0], delta) == pytest.approx(
        eff.params["eff[32]"]
    )
    assert "needs the BF16 law" in fit_law(part, EFF_PER_G, "x", paper, {"A": None})


def test_splits_hold_out_what_they_say():
    table = _usable(levelling_table())
    part = table[table["fit_key"] == "w4a4/int4"].reset_index(drop=True)
    splits, notes = make_splits(part)
    assert not notes and {s.criterion for s in splits} == set(CRITERIA) - {START_CRITERION}
    ratio = part["tokens"] / part["n_params"]
    top = next(s for s in splits if s.criterion == "largest_D_per_N")
    assert ratio[top.test].min() > ratio[top.train].max()  # the largest D/N, nothing else
    assert 0.2 <= top.test.mean() <= 0.4
    big_d = next(s for s in splits if s.criterion == "leave_largest_D")
    assert (part["tokens"][big_d.test] == part["tokens"].max()).all()
    cv = [s for s in splits if s.criterion == "cell_cv"]
    assert sum(s.test.sum() for s in cv) == len(part)  # each cell held out once


def test_one_standard_error_rule():
    noisy = np.array([0.05, 0.09, 0.04, 0.08, 0.06, 0.07])
    units = {
        "paper": {"cell_cv": noisy},
        "levelled_D": {"cell_cv": noisy - np.array([0.002, -0.004, 0.003, 0.0, 0.004, -0.001])},
    }
    n_params = {"paper": 4, "levelled_D": 5}
    chosen = select(units, n_params)
    assert chosen["reference"] == "levelled_D" and chosen["law"] == "paper"  # within one SE
    units["levelled_D"]["cell_cv"] = noisy - 0.0005  # a hair better everywhere: SE 0, a tie
    assert select(units, n_params)["law"] == "paper"
    units["levelled_D"]["cell_cv"] = noisy - 0.02  # better on every cell: beyond one SE
    assert select(units, n_params)["law"] == "levelled_D"
    forced = select(units, n_params, forced="paper")
    assert forced["law"] == "paper" and forced["rule_selects"] == "levelled_D"
    assert select({"paper": {}}, {"paper": 4})["law"] == "paper"


def test_the_papers_law_is_kept_unless_beaten_by_one_se():
    """A simpler law a hair better on average, within one SE, does not replace the paper's law;
    one better on every cell does; between two challengers, parsimony decides."""
    noisy = np.array([0.05, 0.09, 0.04, 0.08, 0.06, 0.07])
    wobble = np.array([0.004, -0.006, 0.005, -0.002, 0.006, 0.001])
    units = {"paper": {"cell_cv": noisy}, "no_D": {"cell_cv": noisy - wobble}}
    n_params = {"paper": 4, "no_D": 3, "levelled_D": 5}
    chosen = select(units, n_params)
    assert chosen["reference"] == "no_D" and chosen["law"] == "paper"
    assert "the paper's law is kept: no law beats it by more than one SE" in chosen["why"]
    units["no_D"]["cell_cv"] = noisy - 0.02
    assert select(units, n_params)["law"] == "no_D"
    units["levelled_D"] = {"cell_cv": noisy - 0.02 + wobble / 10}
    assert select(units, n_params)["law"] == "no_D"  # both beat the paper's: the simpler


def test_levelling_table_selects_the_levelling_law_and_cuts_extrapolation_error():
    """A table like the public NVFP4 runs whose truth levels off."""
    res = run_fit(pair_deltas(build_table(levelling_table(seed=0).to_dict("records"))), [],
                  Settings(bootstrap=50)).result  # fmt: skip
    check_intervals(res)
    for key in ("w4a4/nvfp4", "w4a4/mxfp4", "w4a4/int4"):
        fit = res["delta"][key]
        assert fit["law"] == fit["selected"] == "levelled_D", (key, fit["selection"]["why"])
        paper, levelled = fit["laws"]["paper"], fit["laws"]["levelled_D"]
        assert levelled["held_out"]["largest_D_per_N"] < 0.6 * paper["held_out"]["largest_D_per_N"]
        assert levelled["held_out_error"] < paper["held_out_error"]
        assert fit["params"] == levelled["params"] and fit["ci95"] == levelled["ci95"]
        assert fit["laws"]["eff_per_G"]["fitted"] and fit["laws"]["no_D"]["fitted"]


def test_paper_table_keeps_the_papers_law():
    res = run_fit(pair_deltas(build_table(synthetic_table(seed=3).to_dict("records"))), [],
                  Settings(bootstrap=0)).result  # fmt: skip
    fit = res["delta"]["w4a4/int4"]
    assert fit["law"] == "paper", fit["selection"]["why"]
    assert set(fit["laws"]) == set(LAWS)
    for entry in fit["laws"].values():
        if entry["fitted"]:
            assert set(entry["held_out"]) == set(CRITERIA)
            assert {"params", "ci95", "n_params", "in_sample", "aicc"} <= set(entry)
    fp4 = res["delta"]["w4a4/fp4"]  # one cell: nothing held out, no D to level off
    assert fp4["law"] == "paper" and "no held-out criterion" in fp4["selection"]["why"]
    assert not fp4["laws"]["levelled_D"]["fitted"] and "gamma_D" in fp4["laws"]["levelled_D"]["why"]


def test_d_fp_qat_is_dremov_form_at_one_bit_width():
    """delta = k (log2 G)^gamma_G [1 + phi n^-psi s_qat^-omega + lambda n^-nu s_fp^xi
    s_qat^-rho], written out by hand here; from step 0 (f = 0) the interaction vanishes."""
    p = START_TRUTH
    n, d, g, f = 3e8, 2e10, 64.0, np.array([0.0, 0.5, 0.8])
    at = Points.at(n, d, g, g, f)
    s_qat, s_fp, n_rel = (1 - f) * d / (100 * n), f * d / (100 * n), n / 1e8
    by_hand = (
        p["k"] * np.log2(g) ** p["gamma_G"]
        * (1 + p["phi"] * n_rel ** -p["psi"] * s_qat ** -p["omega"]
           + p["lambda"] * n_rel ** -p["nu"] * s_fp ** p["xi"] * s_qat ** -p["rho"])
    )  # fmt: skip
    assert np.allclose(np.exp(law_log_delta(D_FP_QAT, p, at)), by_hand, rtol=1e-12)
    pure = p["k"] * np.log2(g) ** p["gamma_G"] * (1 + p["phi"] * n_rel ** -p["psi"] * s_qat[0] ** -p["omega"])  # fmt: skip
    assert np.exp(law_log_delta(D_FP_QAT, p, at))[0] == pytest.approx(pure, rel=1e-12)
    # psi and nu go with gamma_N: left out (None) they contribute nothing, N^0
    no_n = {**p, "psi": None, "nu": None}
    flat = np.exp(
        law_log_delta(D_FP_QAT, no_n, Points.at([1e8, 1e9], 100 * np.array([1e8, 1e9]), g, g, 0.5))
    )
    assert flat[0] == pytest.approx(flat[1], rel=1e-12)  # fmt: skip
    assert D_FP_QAT.name not in LAWS and get_law("D_fp_qat") is D_FP_QAT  # pooled only
    assert D_FP_QAT.needs()["xi"] == "start fraction"


def test_start_fractions_pool_only_settings_that_differ_in_when_qat_starts():
    assert pooled_key("w4a4/int4-from0.5") == "w4a4/int4"
    assert pooled_key("w4a4/int4-wsd-from0.25") == "w4a4/int4-wsd"
    assert pooled_key("w4a4/nvfp4") == "w4a4/nvfp4"
    table = _usable(start_fraction_table("D_fp_qat"))
    quant = table[table["scheme"] != "bf16"]
    groups = start_fraction_groups(quant)
    assert list(groups) == ["w4a4/int4"] and len(groups["w4a4/int4"]) == len(quant)
    one = quant[quant["fit_key"] == "w4a4/int4-from0.5"].reset_index(drop=True)
    assert start_fraction_groups(one) == {}
    paper = fit_delta(one, "w4a4/int4-from0.5")
    why = fit_law(one, D_FP_QAT, "w4a4/int4-from0.5", paper)
    assert isinstance(why, str) and "1 QAT start fraction(s) (0.5)" in why
    splits, notes = make_splits(groups["w4a4/int4"])
    held = [s for s in splits if s.criterion == START_CRITERION]
    assert len(held) == len(START_FRACTIONS) and not notes
    for split in held:  # each start fraction held out whole, nothing else
        assert groups["w4a4/int4"]["start_fraction"][split.test].nunique() == 1
        assert not (groups["w4a4/int4"]["start_fraction"][split.train].isin(
            groups["w4a4/int4"]["start_fraction"][split.test])).any()  # fmt: skip


@pytest.mark.parametrize("truth", ["D_fp_qat", "paper"])
def test_across_start_fractions_the_law_the_data_follow_is_selected(truth: str):
    """Runs from Dremov et al.'s law select it and it predicts a held-out start fraction; runs
    where when QAT starts does not matter keep the paper's law (the incumbent)."""
    table = pair_deltas(build_table(start_fraction_table(truth, seed=1).to_dict("records")))
    item = run_fit(table, [], Settings(bootstrap=0)).result["start_fractions"]["w4a4/int4"]
    assert item["start_fractions"] == list(START_FRACTIONS)
    assert item["law"] == truth, item["selection"]["why"]
    paper, dremov = item["laws"]["paper"], item["laws"]["D_fp_qat"]
    assert set(dremov["held_out"]) == set(CRITERIA) and dremov["n_params"] == 9
    if truth == "D_fp_qat":
        assert dremov["held_out"][START_CRITERION] < 0.2 * paper["held_out"][START_CRITERION]
        for name in ("k", "gamma_G", "omega", "xi"):
            assert dremov["params"][name] == pytest.approx(START_TRUTH[name], rel=0.25), name
    else:
        assert paper["held_out_error"] < dremov["held_out_error"]
