"""report.md and a self-contained report.html (PNGs inlined as base64) from one fit.

Both formats render the same list of sections, so they never disagree. The order answers
first: the verdict, the results per run cell, the figures, the fitted laws and predictions;
the diagnostics (identifiability, outliers, validation, excluded runs) come last, folded.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.law.compare import CRITERIA, RULE, START_CRITERION
from qat_sweep.analysis.law.formulas import BASE_PARAMS, DELTA_PARAMS, KNOWN_LAWS
from qat_sweep.analysis.law.identify import OUTLIER_Z
from qat_sweep.analysis.predict import EXTRAPOLATION_WARN
from qat_sweep.analysis.report import reproduced
from qat_sweep.analysis.report.plots import CAPTIONS
from qat_sweep.analysis.report.style import DPI

from qat_sweep.common import format_count, format_number, write_atomic

EXPECTED = {"N": "falls", "D": "rises", "G": "rises"}
PAPER_CHANGE = {
    "N": paper.FINDINGS["delta_change_with_n"],
    "D": paper.FINDINGS["delta_change_with_d"],
}


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # diagnostics, folded under the section
    folded: bool = False  # the whole section folded (detail a reader opens on purpose)
    fold_from: int | None = None  # tables from this index on are folded under their caption
    open_first: bool = False  # ...except the first, shown open
    notes: list[str] = field(default_factory=list)  # numbered notes the tables refer to


class Notes:
    """Warnings numbered once: a table cell names the number, the text is said once below."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def refs(self, warnings: list[str]) -> str:
        numbers = []
        for text in dict.fromkeys(warnings):
            if text not in self.texts:
                self.texts.append(text)
            numbers.append(str(self.texts.index(text) + 1))
        return ", ".join(numbers)

    def lines(self) -> list[str]:
        return [f"[{i}] {text}" for i, text in enumerate(self.texts, 1)]


def _f(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, (int, float)):
        return format_number(value, digits=digits)
    return str(value)


def _ci(ci: Any, digits: int = 4) -> str:
    return f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]" if ci else "n/a"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci_of(fit: dict[str, Any], name: str) -> str:
    """The interval with its flag: an interval the grid cannot support never stands alone."""
    flag = (fit.get("interval_flags") or {}).get(name)
    text = _ci(fit["ci95"].get(name))
    return f"{text} ({flag})" if flag else text


def _identifiability(fit: dict[str, Any]) -> list[str]:
    """The design's condition; the exponents it cannot separate are in the fit's notes."""
    ident = fit.get("identifiability") or {}
    if not ident:
        return []
    lines = [
        f"Design in ({', '.join(ident['design'])}) over the fitted cells: condition number "
        f"{_f(ident['condition'], 3)}, {ident['n_cells']} cells, {ident['n_params']} parameters"
        + (", exact fit (no intervals)" if ident.get("exact_fit") else "")
        + "."
    ]
    return lines


def _outliers(fit: dict[str, Any]) -> list[str]:
    found = fit.get("outliers") or []
    if not found:
        return []
    runs = ", ".join(f"{o['run_key']} (z = {o['robust_z']:.1f})" for o in found)
    return [
        f"Outliers (robust residual beyond {OUTLIER_Z:g} robust sd; kept, the Huber loss limits "
        f"their weight): {runs}."
    ]


def base_section(res: dict[str, Any]) -> Section:
    base = res["base"]
    rows = [
        {
            "param": p,
            "ours": _f(base["params"].get(p)),
            "95% CI": _ci_of(base, p),
            "paper": _f(paper.BASE[p]),
        }
        for p in BASE_PARAMS
    ]
    text = [
        f"Fitted on {base['n_runs']} BF16 runs in {base['n_cells']} (N, D) cells; Huber loss on log-loss residuals "
        f"(f_scale {base['huber_f_scale']:g}), summed; alpha {'tied to' if res['settings']['tied'] else 'free from'} beta.",
        f"R^2 = {_f(base.get('r2'))} (paper {paper.BASE_R2}); converged: {base['converged']}; "
        f"{_pct(base['starts']['frac_reached_best'])} of {base['starts']['n']} grid starts reached the best cost; "
        f"bound hits: {', '.join(base['bound_hits']) or 'none'}.",
    ]
    details = [*base["notes"], *_identifiability(base), *_outliers(base)]
    return Section(
        "BF16 law  L = A/N^alpha + B/D^beta + E", text, [("", pd.DataFrame(rows))], details=details
    )


def delta_section(res: dict[str, Any]) -> Section:
    rows, text, details = [], [], []
    for key, fit in res["delta"].items():
        ref = paper.TABLE1.get(key, {})
        ours = (fit.get("laws") or {}).get("paper") or fit  # the paper's law, selected or not
        for p in DELTA_PARAMS:
            value = ours["params"].get(p)
            rows.append({
                "setting": key, "param": p,
                "ours": _f(value) if value is not None else "not identifiable",
                "95% CI": _ci_of(ours, p), "paper": _f(ref.get(p)),
            })  # fmt: skip
        law = fit.get("law", "paper")
        text.append(
            f"{key}: selected law {law}"
            + ("" if law == "paper" else " (the table shows the paper's law; see Which law holds)")
            + f". {fit['n_runs']} runs, {fit['n_cells']} cells, mean |relative error| of delta {_pct(fit.get('rel_error'))}, "
            f"converged {fit['converged']}, {_pct(fit['starts']['frac_reached_best'])} of starts at the best cost, "
            f"bound hits: {', '.join(fit['bound_hits']) or 'none'}."
        )
        details += [
            f"{key}: {line}" for line in fit["notes"] + _identifiability(fit) + _outliers(fit)
        ]
    if not rows:
        text.append("No quantized runs with a BF16 twin: no delta law fitted.")
    joint = res.get("joint")
    tables = [("Our Table 1 beside the paper's", pd.DataFrame(rows))]
    if joint:
        jrows = [{"setting": "bf16", **{p: _f(v) for p, v in joint["base"].items()}}]
        jrows += [
            {"setting": k, **{p: _f(v) for p, v in d.items()}} for k, d in joint["delta"].items()
        ]
        tables.append(("Joint fit (all runs at once)", pd.DataFrame(jrows)))
        text.append(
            f"Joint fit: {joint['n_runs']} runs, converged {joint['converged']}. {joint['note']}."
        )
    return Section(
        "Quantization error  delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N",
        text,
        tables,
        details=details,
    )


def _law_rows(
    key: str, fit: dict[str, Any], criteria: tuple[str, ...], used: set[str]
) -> list[dict[str, Any]]:
    """One setting's laws, a row each, with the held-out error under every criterion."""
    laws, selection = fit.get("laws") or {}, fit.get("selection") or {}
    chosen = fit.get("law", "paper")
    rows = []
    for name, entry in laws.items():  # the paper's law is always listed
        used.add(name)
        mark = ("forced" if selection.get("forced") else "selected") if name == chosen else ""
        if not entry.get("fitted"):
            rows.append({"setting": key, "law": name, "": mark, "params": "",
                         "in sample": "not fitted: " + entry.get("why", "")})  # fmt: skip
            continue
        ho = entry.get("held_out") or {}
        err, se = entry.get("held_out_error"), entry.get("held_out_se")
        rows.append({
            "setting": key, "law": name, "": mark, "params": entry.get("n_params"),
            "in sample": _pct(entry.get("in_sample")),
            **{c: _pct(ho.get(c)) for c in criteria},
            "held-out error (SE)": f"{_pct(err)} ({_pct(se)})" if err is not None else "n/a",
            "AICc": _f(entry.get("aicc"), 5),
            "fitted parameters": ", ".join(
                f"{p}={_f(v, 3)}" for p, v in entry["params"].items() if v is not None
            ),
        })  # fmt: skip
    return rows


def laws_section(res: dict[str, Any]) -> Section:
    """Which law holds: every candidate law by criterion, the selection and why; and, where
    settings of several QAT start fractions pool, the paper's law against D_fp_qat."""
    rows, pooled_rows, text = [], [], []
    used: set[str] = set()
    per_setting = tuple(c for c in CRITERIA if c != START_CRITERION)
    for key, fit in res["delta"].items():
        if fit.get("laws"):
            text.append(f"{key}: {fit.get('law', 'paper')}. {fit['selection'].get('why', '')}.")
            rows += _law_rows(key, fit, per_setting, used)
    for key, item in (res.get("start_fractions") or {}).items():
        label = f"{key} at start fractions {', '.join(f'{f:g}' for f in item['start_fractions'])}"
        text.append(f"{label}: {item['law']}. {item['selection'].get('why', '')}.")
        pooled_rows += _law_rows(label, item, CRITERIA, used)
    if not rows:
        return Section("Which law holds", ["No delta law fitted."])
    text = [
        "Every candidate law is fitted to each setting with the same Huber loss, bounds and left-out "
        "exponents as the paper's law, and judged by how it predicts runs it was not fitted on: "
        "leave_largest_N / leave_largest_D (fit without the largest N or D, predict it), "
        "largest_D_per_N (fit without the top quarter of cells by tokens per parameter, predict "
        "them) and cell_cv (leave one (N, D) cell out at a time). Each is the mean |predicted - "
        f"actual| / actual of delta over the held-out runs. Rule: {RULE}. AICc (Gaussian log "
        "residuals) is shown for reference only. docs/laws.md explains the laws and the rule.",
        *(
            ["Settings trained at several QAT start fractions f (BF16 for the first f D tokens, "
             "then QAT) are also pooled: there the paper's law, blind to f (when QAT starts does "
             "not change delta), meets D_fp_qat, Dremov et al.'s law in BF16 and QAT tokens, "
             "with one more criterion, leave_one_start_fraction_out (fit without one f, predict "
             "it)."]
            if pooled_rows else []
        ),
        *text,
    ]  # fmt: skip
    law_rows = [
        {"law": name, "formula": law.formula, "needs varied": ", ".join(
            f"{p}: {a}" for p, a in law.needs().items()) or "-",
         "contains": ", ".join(law.nests) or "-", "source": law.about}
        for name, law in KNOWN_LAWS.items() if name in used
    ]  # fmt: skip
    tables = [("Laws by criterion", pd.DataFrame(rows).fillna(""))]
    if pooled_rows:
        tables.append(("Across QAT start fractions", pd.DataFrame(pooled_rows).fillna("")))
    tables.append(("The candidate laws", pd.DataFrame(law_rows)))
    return Section("Which law holds", text, tables, ["law_residuals"])


def validation_section(res: dict[str, Any]) -> Section:
    val = res["validation"]
    rows = []
    for key, item in val["laws"].items():
        ref = item.get("paper") or {}
        rows.append({
            "setting": key, "ours": _pct(item["ours"]), "N-only per G": _pct(item["n_only"]),
            "ours without D": _pct(item["no_d"]), "paper ours": _pct(ref.get("ours")),
            "paper N-only": _pct(ref.get("n_only")), "paper no-D": _pct(ref.get("no_d")),
        })  # fmt: skip
    out_rows = []
    for label in ("leave_largest_N_out", "leave_largest_D_out", "holdout"):
        item = val[label]
        if "note" in item and "delta" not in item:
            out_rows.append(
                {"check": label, "setting": "", "runs": "", "rel. error of delta": item["note"]}
            )
            continue
        if "bf16" in item and "loss_rel_error" in item["bf16"]:
            out_rows.append({"check": label, "setting": "bf16 loss", "runs": item["bf16"].get("n_test", ""),
                             "rel. error of delta": f"loss error {_pct(item['bf16']['loss_rel_error'])}"})  # fmt: skip
        for key, d in item.get("delta", {}).items():
            out_rows.append({"check": label, "setting": key, "runs": d.get("n_test", ""),
                             "rel. error of delta": _pct(d["rel_error"]) if "rel_error" in d else d["note"]})  # fmt: skip
    text = [
        "Mean |relative error| = mean |predicted - actual| / actual of delta (paper Table 2 metric), in sample. "
        "N-only: delta = k_G / N^gamma fitted separately for each granularity (the earlier laws); "
        "without D: our law with gamma_D = 0 (paper Table 4 ablation).",
        "Out of sample: refit without the largest N (or D) and predict it; runs flagged holdout are never fitted.",
    ]
    return Section(
        "Validation",
        text,
        [
            ("Delta laws compared", pd.DataFrame(rows)),
            ("Held-out predictions", pd.DataFrame(out_rows)),
        ],
        folded=True,
    )


def _exponent(fit: dict[str, Any], name: str) -> str:
    """An exponent with its 95% interval, or why there is none."""
    if name not in fit["params"]:
        return "not in the law"
    value = fit["params"][name]
    flag = (fit.get("interval_flags") or {}).get(name, "")
    if value is None or flag.startswith("not identifiable"):
        return "not identifiable"
    return f"{_f(value, 3)} {_ci(fit['ci95'].get(name), 3)}"


def _trend(entry: dict[str, Any], axis: str, key: str) -> str:
    """Does delta move as the paper says along one axis, from the data alone."""
    t, want = entry[axis], EXPECTED[axis]
    if not t["comparisons"]:
        return "not testable (one value)"
    share = 1 - t["frac_rising"] if want == "falls" else t["frac_rising"]
    verdict = "yes" if t["verdict"] == want else "NO"
    ref = (
        f", paper {_pct(PAPER_CHANGE[axis])}" if axis in PAPER_CHANGE and key == "w4a4/int4" else ""
    )
    return f"{verdict}: {_pct(share)} of {t['comparisons']}, mean {_pct(t['mean_rel_change'])}{ref}"


def verdict_section(res: dict[str, Any]) -> Section:
    """What the data say, first: the BF16 law, each setting's law with its exponents, whether
    delta moves with N, D and G as the paper says, and INT4 against FP4."""
    base = res["base"]
    if base["params"].get("A") is not None:
        text = [
            f"BF16 law: alpha = {_exponent(base, 'alpha')}, E = {_f(base['params']['E'], 3)} "
            f"{_ci(base['ci95'].get('E'), 3)}, R^2 = {_f(base.get('r2'), 3)} (paper alpha "
            f"{_f(paper.BASE['alpha'], 3)}, E {_f(paper.BASE['E'], 3)})."
        ]
    else:
        text = ["BF16 law: not identifiable from these runs (see its section's diagnostics)."]
    trends = res["analyses"]["trends"]
    rows = []
    for key, fit in res["delta"].items():
        forced = (fit.get("selection") or {}).get("forced")
        row = {"setting": key, "law": f"{fit.get('law', 'paper')}{' (--law)' if forced else ''}"}
        row |= {name: _exponent(fit, name) for name in ("gamma_N", "gamma_D", "gamma_G")}
        entry = trends.get(key)
        for axis, want in EXPECTED.items():
            row[f"delta {want} with {axis}?"] = _trend(entry, axis, key) if entry else "n/a"
        rows.append(row)
    text += _int4_vs_fp4(res)
    text.append(
        "Brackets: 95% bootstrap intervals over (N, D) cells. Law: the one selected by held-out "
        "error (Which law holds). The trend columns compare cells that differ in one axis only: "
        "the share of comparisons that move as the paper says and the mean relative change."
    )
    tables = [("", pd.DataFrame(rows))] if rows else []
    if not rows:
        text.append("No quantized runs with a BF16 twin: no delta law fitted.")
    return Section("Verdict", text, tables)


def _int4_vs_fp4(res: dict[str, Any]) -> list[str]:
    fp = res["analyses"]["int4_vs_fp4"]
    if not fp.get("available"):
        return ["INT4 vs FP4: not testable, " + fp["missing"] + "."]
    diffs = fp["int4_minus_fp4_per_G"]
    channel = diffs.get("channel")
    grouped = [v for g, v in diffs.items() if g != "channel"]
    line = "INT4 vs FP4 (W4A4): "
    if grouped:
        line += f"with groups INT4 - FP4 averages {_f(sum(grouped) / len(grouped), 3)} (paper: about equal); "
    if channel is not None:
        better = "INT4 better" if channel < 0 else "FP4 better"
        line += f"per channel {_f(channel, 3)} ({better}; paper -0.015, INT4 better)."
    return [line]


def analyses_section(res: dict[str, Any]) -> Section:
    an = res["analyses"]
    text, tables = [], []
    dec = an["decomposition"]
    if dec.get("available"):
        g, ref = dec["growth_with_D"], paper.FINDINGS
        text.append(
            f"Decomposition: delta_W4A4 = {dec['k_prime']:.3f} x (delta_W4A16 + delta_W16A4) over {dec['n']} cells "
            f"(paper {ref['decomposition_k']}), relative error {_pct(dec['rel_error'])}. Growth with D: weight error {_pct(g['weight'])} "
            f"(paper +{ref['weight_growth_with_d']:.0%}), activation error {_pct(g['act'])} (paper +{ref['act_growth_with_d']:.0%})."
        )
    else:
        text.append("Decomposition: not available, " + dec["missing"] + ".")
    for label, item in an["ratio_R"].items():
        if item.get("available"):
            text.append(
                f"R = delta_W16A4 / delta_W4A16 ({label}): {item['min']:.2f} to {item['max']:.2f}, "
                f"{_pct(item['frac_above_1'])} of cells above 1 (paper: 1.20 to 1.67 at G=32; 0.85 to 1.10 with 8-bit FC2)."
            )
        else:
            text.append(f"R ({label}): not available, {item['missing']}.")
    for scheme, item in an["fc2_8bit"].items():
        if scheme == "paper":
            continue
        if item.get("available"):
            red = ", ".join(f"G={g}: {_pct(v)}" for g, v in item["reduction_per_G"].items())
            text.append(
                f"8-bit FC2 input, {scheme}: delta reduced by {red} (paper W4A4: 20.5% at G=32 to 42.9% at G=256)."
            )
        else:
            text.append(f"8-bit FC2 input, {scheme}: not available, {item['missing']}.")
    formats = an.get("formats", {})
    if formats.get("available"):
        rows = [
            {
                "setting": key,
                "runs (with a twin, in the fit)": f"{item['runs']} ({item['paired']}, "
                f"{item['in_fit']})",
                "(N, D) cells": item["cells"],
                "mean delta per G": ", ".join(
                    f"G={g}: {_f(v, 4)}" for g, v in item["mean_delta_per_G"].items()
                ),
                "minus INT4 at the same G (matched cells; negative: better)": ", ".join(
                    f"G={g}: {_f(v, 4)}" for g, v in item["minus_int4_per_G"].items()
                )
                if item["minus_int4_per_G"]
                else "-",
            }
            for key, item in formats["settings"].items()
        ]
        tables.append(
            (
                "Formats compared (a block format at its block; -had: Hadamard rotation; "
                "docs/formats.md)",
                pd.DataFrame(rows),
            )
        )
    schedules = an.get("schedules", {})
    if schedules.get("available"):
        rows = [
            {"setting": key, "schedule": name, "(N, D, G) cells": item["cells"],
             "mean delta": _f(value, 4),
             "growth with D": _pct(item["growth_with_D"].get(name))}
            for key, item in schedules["settings"].items()
            for name, value in item["mean_delta"].items()
        ]  # fmt: skip
        tables.append(
            (
                "Delta per schedule (cells every schedule of a setting has; BF16 to f: QAT "
                "after BF16 from that fraction of the steps)",
                pd.DataFrame(rows),
            )
        )
    sites = an["sites"]
    if sites.get("available"):
        frame = pd.DataFrame(sites["mean_per_setting"]).dropna(how="all")  # metric_site x setting
        frame = frame.map(lambda v: "" if v is None or pd.isna(v) else _f(v, 3))
        tables.append(
            (
                "Per-site kurtosis and quantization NMSE ||x_hat - x||^2 / ||x||^2 (means; paper FC2 kurtosis "
                f"{paper.FINDINGS['fc2_kurtosis_bf16']:g} BF16, {paper.FINDINGS['fc2_kurtosis_w4a4']:g} W4A4)",
                frame.reset_index(names="metric and site"),
            )
        )
    else:
        text.append("Per-site kurtosis: not available, " + sites["missing"] + ".")
    slopes = ", ".join(f"{k}: {_f(v, 3)}" for k, v in an["contour_slopes"].items())
    text.append(
        f"Iso-delta contours are straight lines in (log N, log D) with slope gamma_N / gamma_D: {slopes or 'n/a'}."
    )
    figures = ["decomposition", "ratio_R", "fc2_8bit", "int4_vs_fp4", "contours"]
    return Section("The paper's analyses", text, tables, figures)


def predictions_section(res: dict[str, Any]) -> Section:
    """Predictions at 1B-70B: within EXTRAPOLATION_WARN x the fitted N and D as a table; beyond,
    only in a folded table that says how far out each row is. Each warning is a numbered note."""
    largest = {c: (res["base"].get("range") or {}).get(c, [None, None])[1]
               for c in ("n_params", "tokens")}  # fmt: skip
    notes = Notes()
    near, far, reaches = [], [], [0.0]
    for p in res.get("predictions", []):
        reach = max(
            (p.get("n_params") or 0) / (largest["n_params"] or np.inf),
            (p.get("tokens") or 0) / (largest["tokens"] or np.inf),
        )
        warnings = [w for w in p["warnings"] if ": an extrapolation" not in w]  # the column says it
        row = {
            "model": p["model"], "D/N": p["tokens_per_param"], "setting": p["setting"],
            "law": p.get("law", "paper"),
            "BF16 loss": f"{p['bf16_loss']['value']:.4f} {_ci(p['bf16_loss']['ci95'])}",
            "delta": f"{p['delta']['value']:.4f} {_ci(p['delta']['ci95'])}",
            "QAT loss (95% PI)": f"{p['qat_loss']['value']:.4f} {_ci(p['qat_loss']['pi95'])}",
            "eff. multiplier": f"{p['eff_multiplier']['value']:.3f} {_ci(p['eff_multiplier']['ci95'])}",
            "beyond the fitted N, D": f"{reach:,.0f}x" if reach > 1 else "inside",
            "notes": notes.refs(warnings),
        }  # fmt: skip
        (far if reach > EXTRAPOLATION_WARN else near).append(row)
        reaches.append(reach)
    reach_text = (
        f"largest fitted N {format_count(largest['n_params'])}, D {format_count(largest['tokens'])}"
        if largest["n_params"] and largest["tokens"] else "fitted range unknown"
    )  # fmt: skip
    text = [
        "Extrapolations at G = 128 (per-channel would use hidden 2048 / 4096 / 8192) with each "
        "setting's selected delta law (column law); brackets are 95% bootstrap intervals; "
        f"{reach_text}. A prediction more than {EXTRAPOLATION_WARN:g}x beyond the fitted N or D "
        "is not supported by the data: those rows are folded apart and flagged."
    ]
    tables = []
    if near:
        tables.append((f"Within {EXTRAPOLATION_WARN:g}x of the fitted range", pd.DataFrame(near)))
    if far:
        tables.append((
            f"FAR OUTSIDE THE FITTED RANGE ({len(far)} rows, up to "
            f"{max(reaches):,.0f}x): "
            "for orientation only", pd.DataFrame(far),
        ))  # fmt: skip
    if not res.get("predictions"):
        text = ["No predictions: the BF16 law or every delta law is missing."]
    return Section("Predictions", text, tables, ["effective_params"], fold_from=len(tables) - 1 if far else None,
                   notes=notes.lines())  # fmt: skip


def decisions_section(res: dict[str, Any]) -> Section:
    """The Decisions section: decide's quantities (analysis/decide.py) at the largest fitted (N, D) and 7B."""
    rows, notes = [], Notes()
    for d in res.get("decisions") or []:
        bg, tt, cx, eff = (
            d[k]
            for k in ("best_group_size", "tokens_to_tolerance", "int4_vs_fp4", "eff_multiplier")
        )
        cross = "n/a"
        if cx["available"]:
            cross = (
                f"G = {_f(cx['group_size'], 3)} {_ci(cx['ci95'])}" if cx["group_size"] else "none"
            )
        bf = d.get("best_format") or {}
        rows.append({
            "setting": d["setting"], "law": d.get("law", "paper"), "N": _f(d["n_params"], 3),
            "D": _f(d["tokens"], 3),
            f"best G at {_f(bg['bits_budget'])} bits": f"{bg['group_size']} ({_pct(bg['share_of_draws'])} of draws)",
            "best fitted format at that budget": (
                f"{bf['setting']} G={bf['group_size']} ({_f(bf['bits_per_weight'], 4)} bits, "
                f"{_pct(bf['share_of_draws'])} of draws)" if bf.get("available") else "n/a"),
            f"D where delta = {_f(tt['tolerance'])} (G={tt['group_size']})": f"{_f(tt['tokens'], 3)} {_ci(tt['ci95'])}",
            "INT4 = FP4 at": cross,
            "eff. multiplier": f"{_f(eff['value'], 3)} {_ci(eff.get('ci95'))}",
            "notes": notes.refs(bg["warnings"] + tt["warnings"] + cx.get("warnings", [])),
        })  # fmt: skip
    text = [
        "Per setting: the group size minimising loss within a memory budget of 4 + 16/G bits per "
        "weight, the fitted format and G of that scheme minimising it within the same budget (MX "
        "formats store 4 + 8/32 bits per weight, NV formats 4 + 8/16 plus a negligible per-tensor "
        "FP32 scale), the tokens at which delta reaches the tolerance, the G at which INT4 and FP4 "
        "delta cross (where both are fitted) and the effective parameter multiplier; brackets are "
        "95% intervals over the bootstrap draws (n/a as an upper end: some draws never get there). "
        "`qat-sweep decide` asks at any point."
    ]
    if not rows:
        text = ["No decisions: no fully identified delta law (or no BF16 law)."]
    return Section(
        "Decisions", text, [("", pd.DataFrame(rows))] if rows else [], notes=notes.lines()
    )


def preregistered_section(res: dict[str, Any]) -> Section:
    """Sealed predictions (analysis/seal.py) beside the runs that exist now."""
    rows = []
    for item in res.get("preregistered") or []:
        if item["status"] != "ok":
            rows.append(
                {"file": item["file"], "status": item["status"].upper() + ": " + item["why"]}
            )
            continue
        for p in item["predictions"]:
            quantity = "qat_loss" if p["setting"] != "bf16" else "bf16_loss"
            for name in (quantity, "delta"):
                c = p.get(name)
                if not c:
                    continue
                measured = c.get("measured")
                rows.append({
                    "file": item["file"], "status": "ok", "sealed": item.get("created"),
                    "law": p.get("law") or "-", "setting": p["setting"],
                    "N": _f(p["n_params"], 3), "D": _f(p["tokens"], 3),
                    "G": p.get("group_size") or "-", "quantity": name,
                    "prediction (95% PI)": f"{_f(c['predicted'])} {_ci(c.get('pi95'))}",
                    "measured": f"{_f(measured)} ({p['n_runs']} runs)" if measured is not None
                    else "not run yet",
                    "error": _pct(c.get("rel_error")) if measured is not None else "",
                    "covered": ("yes" if c.get("covered") else "NO") if measured is not None else "",
                })  # fmt: skip
    text = [
        "Predictions sealed with `qat-sweep predict --seal` before their runs existed (each file "
        "holds the prediction, its intervals and law, the hash of the fit it came from, the "
        "code's git commit and the time, hashed together). Measured: the mean over the usable "
        "runs that match (same setting and group size, N and D within 2 %); error: (predicted - "
        "measured) / measured; covered: inside the sealed 95 % prediction interval. A file whose "
        "hash does not match its content is reported as tampered and not used; fit never "
        "rewrites a sealed file."
    ]
    if not rows:
        text.append("No sealed predictions found (<sweep>/predictions/, or `fit --sealed DIR`).")
    tables = [("", pd.DataFrame(rows).fillna(""))] if rows else []
    return Section("Preregistered predictions", text, tables)


def excluded_section(res: dict[str, Any]) -> Section:
    rows = pd.DataFrame(res["excluded"], columns=["run_key", "reason"])
    text = [
        f"{len(rows)} runs or files were left out of every fit."
        if len(rows)
        else "No run was excluded."
    ]
    return Section("Excluded runs", text, [("", rows)] if len(rows) else [], folded=True)


def _group_order(label: str) -> tuple[bool, float]:
    return (label == "channel", float(label) if label.replace(".", "").isdigit() else 0.0)


def results_section(table: pd.DataFrame | None) -> Section:
    """Per setting, one row per (N, D) cell and one column per G: QAT loss (delta) beside the
    BF16 twin's loss; runs the fit left out are marked, each reason said once below."""
    if table is None or table.empty:
        return Section("Results per cell", ["No run table given: no per-cell results."])
    quant = table[table["scheme"] != "bf16"]
    if quant.empty:
        return Section("Results per cell", ["No quantized runs."])
    n_cell, d_cell = cell_values(quant)
    quant = quant.assign(N=n_cell, D=d_cell, Gl=quant["group_size"].map(_group_text))
    notes = Notes()
    tables = []
    keys = sorted(quant["fit_key"].unique(), key=lambda k: (k != "w4a4/int4", k))
    for key in keys:
        part = quant[quant["fit_key"] == key]
        groups = sorted(part["Gl"].unique(), key=_group_order)
        rows = []
        for (n, d), cell in part.groupby(["N", "D"], sort=True):
            bf16 = cell["bf16_loss"].astype(float)
            row = {"N": format_count(n), "D": format_count(d),
                   "BF16 loss": _f(bf16.mean(), 5) if bf16.notna().any() else "no twin"}  # fmt: skip
            for g in groups:
                runs = cell[cell["Gl"] == g]
                row[f"G = {g}"] = _cell_text(runs, notes) if len(runs) else ""
            rows.append(row)
        used = int(((part["excluded"] == "") & ~part["holdout"].astype(bool)).sum())
        tables.append((f"{key}: {len(part)} runs, {used} in the fit", pd.DataFrame(rows)))
    text = [
        "Each cell: QAT loss (delta = QAT - BF16 twin), means over seeds and learning rates when "
        "a cell holds several runs (their count in brackets); marks [n] name why the fit left "
        "runs out, listed below the tables."
    ]
    return Section(
        "Results per cell", text, tables, fold_from=0, open_first=True, notes=notes.lines()
    )


def _group_text(group: Any) -> str:
    from qat_sweep.analysis.law.formulas import group_label

    return group_label(group) or "-"


def _cell_text(runs: pd.DataFrame, notes: Notes) -> str:
    loss, delta = runs["loss"].astype(float).mean(), runs["delta"].astype(float).mean()
    text = f"{loss:.4f} ({delta:+.4f})" if np.isfinite(delta) else f"{loss:.4f} (no twin)"
    if len(runs) > 1:
        text += f" [{len(runs)} runs]"
    left = [r for r in runs["excluded"] if r] + (
        ["held out (never fitted)"] if runs["holdout"].any() else []
    )
    if left:
        text += f" excluded [{notes.refs(left)}]"
    return text


FIGURES = ["bf16_law", "delta_vs_N", "delta_vs_D", "delta_vs_G", "predicted_vs_measured",
           "twin_curves", "delta_vs_lr", "residuals", "pairs_bf16", "pairs_delta"]  # fmt: skip


def figures_section() -> Section:
    return Section("Figures", [], figures=FIGURES)


def build_sections(res: dict[str, Any], table: pd.DataFrame | None = None) -> list[Section]:
    """The report in reading order: the answer, the data, the figures, the fitted laws and
    what they predict, then the paper's analyses and the folded diagnostics. One line each."""
    return [
        verdict_section(res),
        results_section(table),
        figures_section(),
        base_section(res),
        delta_section(res),
        laws_section(res),
        Section(*reproduced.section(res)),
        preregistered_section(res),
        decisions_section(res),
        predictions_section(res),
        analyses_section(res),
        validation_section(res),
        excluded_section(res),
    ]


def _md_table(frame: pd.DataFrame) -> str:
    cells = frame.map(lambda s: str(s).replace("|", "/"))
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _header(res: dict[str, Any]) -> list[str]:
    counts = res["n_runs"]
    return [
        f"Source: {res['settings']['source']}. Records: {counts['records']}, usable: {counts['usable']}, "
        f"held out: {counts['holdout']}, excluded: {len(res['excluded'])}. Bootstrap: {res['settings']['bootstrap']} "
        f"resamples of (N, D) cells, seed {res['settings']['seed']}. Fit time {res['timing_s']['fit']:.1f} s."
    ]


def _caption(name: str) -> str:
    return f"{name}: {CAPTIONS.get(name, '')}".rstrip(": ")


def write_markdown(
    res: dict[str, Any], figures: dict[str, Path], path: Path, table: pd.DataFrame | None = None
) -> None:
    out = ["# QAT scaling-law fit", "", *_header(res), ""]
    for sec in build_sections(res, table):
        out += [f"## {sec.title}", ""] + [t + "\n" for t in sec.text]
        for caption, frame in sec.tables:
            out += ([f"**{caption}**", ""] if caption else []) + [_md_table(frame), ""]
        out += [t + "\n" for t in sec.notes]
        for name in sec.figures:
            if name in figures:
                out += [f"![{name}](plots/{figures[name].name})", "", f"*{_caption(name)}*", ""]
        if sec.details:
            out += ["**Diagnostics**", ""] + [f"- {t}" for t in sec.details] + [""]
    write_atomic(path, "\n".join(out))


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.4em 0 1.2em;font-size:12.5px}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}.wide{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto;border:1px solid #e4e4e4}figure{margin:1em 0 2em}figcaption{font-size:13px;color:#444}
h2{border-bottom:2px solid #ccc;margin-top:1.6em}details{margin:0.4em 0}summary{cursor:pointer;font-weight:600}
details.section>summary{font-size:1.3em;border-bottom:2px solid #ccc}.notes{font-size:13px;color:#444}
.verdict p{margin:0.3em 0}.verdict{background:#f7f9fc;border:1px solid #d8e0ec;padding:0.6em 1em}"""


def _html_table(frame: pd.DataFrame) -> str:
    return '<div class="wide">' + frame.to_html(index=False, border=0, escape=True) + "</div>"


def _html_section(sec: Section, figures: dict[str, Path]) -> list[str]:
    body = [f"<p>{html.escape(t)}</p>" for t in sec.text]
    for i, (caption, frame) in enumerate(sec.tables):
        if sec.fold_from is not None and i >= sec.fold_from:
            body.append(
                f"<details{' open' if i == 0 and sec.open_first else ''}><summary>{html.escape(caption)}</summary>"
                f"{_html_table(frame)}</details>"
            )
            continue
        if caption:
            body.append(f"<h3>{html.escape(caption)}</h3>")
        body.append(_html_table(frame))
    if sec.notes:
        body.append(
            '<div class="notes">'
            + "".join(f"<p>{html.escape(t)}</p>" for t in sec.notes)
            + "</div>"
        )
    for name in sec.figures:
        if name in figures:
            raw = figures[name].read_bytes()
            data = base64.b64encode(raw).decode()
            width = int.from_bytes(raw[16:20], "big") * 96 // DPI  # CSS px at the printed size
            body.append(
                f'<figure id="fig-{name}"><img alt="{name}" width="{width}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(_caption(name))}</figcaption></figure>"
            )
    if sec.details:
        items = "".join(f"<li>{html.escape(t)}</li>" for t in sec.details)
        body.append(
            f"<details><summary>Diagnostics (identifiability, outliers, notes)</summary><ul>{items}</ul></details>"
        )
    title = html.escape(sec.title)
    if sec.folded:
        return [f'<details class="section"><summary>{title}</summary>', *body, "</details>"]
    if sec.title == "Verdict":
        return [f"<h2>{title}</h2>", '<div class="verdict">', *body, "</div>"]
    return [f"<h2>{title}</h2>", *body]


def write_html(
    res: dict[str, Any], figures: dict[str, Path], path: Path, table: pd.DataFrame | None = None
) -> None:
    body = ["<h1>QAT scaling-law fit</h1>", *(f"<p>{html.escape(t)}</p>" for t in _header(res))]
    for sec in build_sections(res, table):
        body += _html_section(sec, figures)
    page = f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>QAT scaling-law fit</title><style>{CSS}</style></head><body>{"".join(body)}</body></html>'
    write_atomic(path, page)
