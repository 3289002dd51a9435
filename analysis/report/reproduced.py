"""What this fit reproduced of the paper: beside each Table 1 value and each Section 4 number,
the measured one, whether the grid had the runs to measure it, and whether the two agree.

A pure function of fit.json (`res`), so it reads the same from a saved fit. Each claim carries
its own test, stated in the table: a fitted value agrees when the paper's lies inside our 95 %
interval; a trend when it goes the paper's way; a threshold when it is met.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.law.formulas import BASE_PARAMS, DELTA_PARAMS

TITLE = "What this grid reproduced of the paper"
COLUMNS = ["claim", "paper", "measured", "grid had the runs", "test", "agrees"]
APPENDIX_C_N = (145e6, 2.8e9)  # the paper's BF16 runs; it adds OLMo-2-7B and -13B
EPM_FLOOR = 0.5  # the paper: a QAT model is worth more than half its BF16 parameters


def _f(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _row(claim: str, ref: str, measured: str, runs: str, test: str, agrees: bool | None) -> dict:
    verdict = "n/a" if agrees is None else "yes" if agrees else "NO"
    return dict(zip(COLUMNS, (claim, ref, measured, runs, test, verdict), strict=True))


def _fitted_row(claim: str, ref: float, fit: dict[str, Any] | None, name: str) -> dict:
    """A fitted parameter against the paper's: agrees when the paper's value is in our CI."""
    test = "paper's value inside our 95% CI"
    if fit is None:
        return _row(claim, _f(ref), "not fitted", "no: no runs of this setting", test, None)
    value = fit["params"].get(name)
    if value is None:
        why = (fit.get("interval_flags") or {}).get(name) or "not identifiable from these cells"
        return _row(claim, _f(ref), "not identifiable", f"no: {why}", test, None)
    ci = (fit.get("ci95") or {}).get(name)
    flag = (fit.get("interval_flags") or {}).get(name)
    measured = _f(value) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else " (no interval)")
    if flag and flag.startswith("not identifiable"):  # a value the cells cannot support
        return _row(claim, _f(ref), measured, f"no: {flag}", test, None)
    runs = f"partly: {flag}" if flag else "yes"
    return _row(claim, _f(ref), measured, runs, test, ci[0] <= ref <= ci[1] if ci else None)


def table1_rows(res: dict[str, Any]) -> list[dict]:
    """Table 1: the BF16 law and each setting's delta law (the paper's law, selected or not)."""
    rows = [_fitted_row(f"BF16 {p}", paper.BASE[p], res["base"], p) for p in BASE_PARAMS]
    for key, ref in paper.TABLE1.items():
        entry = res["delta"].get(key)
        fit = ((entry.get("laws") or {}).get("paper") or entry) if entry else None
        if fit is not None and fit.get("fitted") is False:  # the paper's law did not fit
            why = fit.get("why") or "not fitted"
            fit = {
                "params": dict.fromkeys(DELTA_PARAMS),
                "interval_flags": dict.fromkeys(DELTA_PARAMS, why),
            }
        rows += [_fitted_row(f"{key} {p}", ref[p], fit, p) for p in DELTA_PARAMS]
    return rows


def _base_range_row(res: dict[str, Any]) -> dict:
    """Appendix C fits 145M-2.8B plus OLMo-2-7B/13B: which part of that the base fit spans."""
    base = res["base"]
    low, high = (base.get("range") or {}).get("n_params") or (None, None)
    extra = base.get("extra_bf16") or []
    measured = "no BF16 runs" if low is None else f"N {_f(low, 3)} to {_f(high, 3)}"
    if extra:
        measured += f", {len(extra)} external points ({', '.join(p['model'] for p in extra)})"
    spans = low is not None and low <= APPENDIX_C_N[0] * 1.01 and high >= APPENDIX_C_N[1] * 0.99
    runs = "yes" if spans else "no: Appendix C's range needs BF16 runs from 145M to 2.8B"
    return _row(
        "BF16 fit's N range (Appendix C)", "145M-2.8B + OLMo-2 7B, 13B", measured, runs,
        "our range covers 145M-2.8B", spans if low is not None else None,
    )  # fmt: skip


def _trend_row(res: dict[str, Any], axis: str, claim: str, ref: float, field: str) -> dict:
    """A change of W4A4 INT4 delta along one axis, measured cell by cell from the runs."""
    entry = res["analyses"]["trends"].get("w4a4/int4", {}).get(axis)
    test = "same sign"
    if not entry or not entry.get("comparisons"):
        return _row(claim, _pct(ref), "not measured", f"no: one {axis} value only", test, None)
    value = entry[field]
    shown = _pct(value) if field == "mean_rel_change" else _f(value, 3)
    measured = f"{shown} (mean of {entry['comparisons']} comparisons)"
    ref_text = _pct(ref) if field == "mean_rel_change" else _f(ref, 3)
    return _row(claim, ref_text, measured, "yes", test, (value > 0) == (ref > 0))


def _available(entry: dict[str, Any], claim: str, ref: str, test: str) -> dict | None:
    """None when the analysis ran; else the row saying which runs it lacked."""
    if entry.get("available"):
        return None
    return _row(claim, ref, "not measured", f"no: {entry.get('missing', 'no runs')}", test, None)


def _decomposition_rows(an: dict[str, Any]) -> list[dict]:
    dec, find = an["decomposition"], paper.FINDINGS
    k_claim, growth_claim = "delta_W4A4 / (delta_W4A16 + delta_W16A4) = k'", "growth with D"
    k_test, growth_test = "within 10% of the paper's", "weight error grows faster than activation"
    growth_ref = (
        f"weight {_pct(find['weight_growth_with_d'])}, act {_pct(find['act_growth_with_d'])}"
    )
    missing = _available(dec, k_claim, _f(find["decomposition_k"], 3), k_test)
    if missing:
        return [missing, _available(dec, growth_claim, growth_ref, growth_test) or missing]
    k = dec["k_prime"]
    weight, act = dec["growth_with_D"]["weight"], dec["growth_with_D"]["act"]
    grows = None if weight is None or act is None else weight > act
    return [
        _row(k_claim, _f(find["decomposition_k"], 3), f"{k:.3f} over {dec['n']} cells", "yes",
             k_test, abs(k / find["decomposition_k"] - 1) <= 0.1),
        _row(growth_claim, growth_ref, f"weight {_pct(weight)}, act {_pct(act)}",
             "yes" if grows is not None else "no: one D value only", growth_test, grows),
    ]  # fmt: skip


def _ratio_rows(an: dict[str, Any]) -> list[dict]:
    rows = []
    for label, claim, ref, test, agrees in (
        ("int4", "R = delta_W16A4 / delta_W4A16", "> 1 (1.67 to 1.20 at G = 32)",
         "R > 1 in every cell", lambda r: r["min"] > 1),
        ("fc2_8bit", "R with the FC2 input at 8 bits", "0.85 to 1.10",
         "our range overlaps 0.85-1.10", lambda r: r["min"] <= 1.10 and r["max"] >= 0.85),
    ):  # fmt: skip
        entry = an["ratio_R"][label]
        missing = _available(entry, claim, ref, test)
        measured = f"{entry['min']:.3g} to {entry['max']:.3g}" if not missing else ""
        rows.append(missing or _row(claim, ref, measured, "yes", test, agrees(entry)))
    return rows


def _fc2_rows(an: dict[str, Any]) -> list[dict]:
    entry, rows = an["fc2_8bit"]["w4a4"], []
    for group, ref in an["fc2_8bit"]["paper"]["w4a4"].items():
        claim = f"8-bit FC2 input cuts delta_W4A4 at G = {group}"
        test = "a cut (> 0) of the paper's order (within 2x)"
        missing = _available(entry, claim, _pct(-ref), test)
        if missing:
            rows.append(missing)
            continue
        value = entry["reduction_per_G"].get(group)
        if value is None:
            rows.append(_row(claim, _pct(-ref), "not measured", f"no: no G = {group} pair",
                             test, None))  # fmt: skip
            continue
        agrees = value > 0 and ref / 2 <= value <= 2 * ref
        rows.append(_row(claim, _pct(-ref), _pct(-value), "yes", test, agrees))
    return rows


def _kurtosis_row(an: dict[str, Any]) -> dict:
    sites, find = an["sites"], paper.FINDINGS
    claim = "FC2-input kurtosis, BF16 -> W4A4 QAT"
    ref = f"{find['fc2_kurtosis_bf16']:.0f} -> {find['fc2_kurtosis_w4a4']:.0f} (595M/100B, G=128)"
    test = "FC2's the largest of the sites, lower under W4A4"
    missing = _available(sites, claim, ref, test)
    if missing:
        return missing
    means = sites["mean_per_setting"]
    bf16, w4a4 = means.get("bf16/bf16", {}), means.get("w4a4/int4", {})
    before, after = bf16.get("kurtosis_fc2"), w4a4.get("kurtosis_fc2")
    if before is None or after is None:
        return _row(claim, ref, "not measured", "no: BF16 and W4A4 runs with site metrics", test,
                    None)  # fmt: skip
    others = [v for k, v in bf16.items() if k.startswith("kurtosis_") and k != "kurtosis_fc2"]
    largest = all(v is None or before > v for v in others)
    measured = f"{before:.3g} -> {after:.3g} (mean over runs)"
    return _row(claim, ref, measured, "yes", test, largest and after < before)


def _fp4_row(an: dict[str, Any]) -> dict:
    entry, ref = an["int4_vs_fp4"], paper.FINDINGS["channel_int4_minus_fp4"]
    claim, test = "per-channel delta INT4 - FP4 (W4A4)", "same sign (INT4 better)"
    missing = _available(entry, claim, _f(ref, 3), test)
    if missing:
        return missing
    value = entry["int4_minus_fp4_per_G"].get("channel")
    if value is None:
        return _row(claim, _f(ref, 3), "not measured", "no: no per-channel pair", test, None)
    return _row(claim, _f(ref, 3), _f(value, 3), "yes", test, (value < 0) == (ref < 0))


def _epm_row(res: dict[str, Any]) -> dict:
    """The effective parameter multiplier of the Table 1 settings' predictions (1B-70B, 20
    and 100 tokens per parameter, G = 128)."""
    claim, ref, test = "effective parameter multiplier (EPM)", "> 0.5", "every prediction > 0.5"
    values = [
        (row["setting"], row["eff_multiplier"]["value"])
        for row in res.get("predictions") or []
        if row["setting"] in paper.TABLE1
        and (row.get("eff_multiplier") or {}).get("value") is not None
    ]
    if not values:
        return _row(claim, ref, "not measured", "no: no BF16 law or delta law to predict with",
                    test, None)  # fmt: skip
    low = min(values, key=lambda item: item[1])
    measured = (
        f"{min(v for _, v in values):.3g} to {max(v for _, v in values):.3g} (lowest {low[0]})"
    )
    return _row(
        claim, ref, measured, "yes (predicted at 1B-70B, G = 128)", test, low[1] > EPM_FLOOR
    )


def findings_rows(res: dict[str, Any]) -> list[dict]:
    """The paper's Section 4 numbers, each from the analyses the fit ran on the runs."""
    an, find = res["analyses"], paper.FINDINGS
    trend = _trend_row
    return [
        _base_range_row(res),
        trend(res, "N", "delta change 74M -> 595M (W4A4)", find["delta_change_with_n"],
              "mean_rel_change"),
        trend(res, "D", "delta change 10B -> 100B (W4A4)", find["delta_change_with_d"],
              "mean_rel_change"),
        trend(res, "G", "delta gap coarsest - finest G (W4A4)", find["g_gap_595m_100b"],
              "mean_abs_change"),
        _fp4_row(an),
        *_decomposition_rows(an),
        *_ratio_rows(an),
        *_fc2_rows(an),
        _kurtosis_row(an),
        _epm_row(res),
    ]  # fmt: skip


def section(res: dict[str, Any]) -> tuple[str, list[str], list[tuple[str, pd.DataFrame]]]:
    """(title, paragraphs, captioned tables) of the report's section."""
    table1, findings = pd.DataFrame(table1_rows(res)), pd.DataFrame(findings_rows(res))
    both = pd.concat([table1, findings])
    measured = both["agrees"] != "n/a"
    text = [
        f"{int(measured.sum())} of {len(both)} of the paper's numbers could be measured on this "
        f"grid; {int((both['agrees'] == 'yes').sum())} agree by the test stated beside each. A "
        "number not measured says which runs it lacks (`qat-sweep design` tells what a grid "
        "can identify before it is run; `paper_full` is built to measure all of them).",
    ]
    tables = [("Table 1 (fitted values)", table1), ("Section 4 findings", findings)]
    extra = res["base"].get("extra_bf16") or []
    if extra:
        text.append(
            "External BF16 points in the base fit (--extra-bf16), shown apart from the runs: "
            "the log residual is log(law) - log(loss)."
        )
        tables.append(("External BF16 points", pd.DataFrame(extra)))
    return TITLE, text, tables
