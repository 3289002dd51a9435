"""`design --truth LAW[:p=v,...]`: a prior whose every setting is drawn from one candidate law,
to ask whether a grid can tell the laws apart (docs/laws.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.design.simulate import Prior
from qat_sweep.analysis.law.formulas import LAWS, Points
from qat_sweep.analysis.law.law_fit import base_of, engine_for


def truth_prior(prior: Prior, spec: str, runs: pd.DataFrame) -> Prior:
    """`--truth LAW[:p=v,...]`: every setting of the grid drawn from LAW. Its parameters are
    the prior fit's own fit of LAW where it has one, else LAW fitted to the prior's noiseless
    delta on this grid (the member of LAW closest to the prior), then the given p=v."""
    name, _, rest = spec.partition(":")
    if name not in LAWS:
        raise InputError(f"--truth {spec!r}: unknown law {name!r}; laws: {', '.join(LAWS)}")
    law = LAWS[name]
    given: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        try:
            given[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"--truth {spec!r}: {item!r} is not param=number")
    out = Prior(
        dict(prior.base), {}, f"{prior.source}; truth {spec}", prior.noise, list(prior.notes),
        list(prior.warnings),
    )  # fmt: skip
    quant = runs[(runs["scheme"] != "bf16") & ~runs["holdout"].to_numpy(bool)]
    for key in sorted(quant["fit_key"].unique()):
        if key not in prior.delta:
            raise InputError(f"the prior ({prior.source}) has no delta law for {key}")
        part = quant[quant["fit_key"] == key].reset_index(drop=True)
        if name in prior.fitted.get(key, {}):
            params, how = dict(prior.fitted[key][name]), "the prior fit's own fit"
        elif prior.law(key) == name:
            params, how = dict(prior.delta[key]), "the prior's"
        else:
            try:
                params, how = _project(prior, key, law, part), "fitted to the prior's delta"
            except InputError as err:  # e.g. one (N, D) cell: no D/N to bend along
                out.delta[key], out.laws[key] = dict(prior.delta[key]), prior.law(key)
                out.notes.append(f"{key}: keeps {prior.law(key)}: {err}")
                continue
        unknown = sorted(set(given) - set(params))
        if unknown:
            raise InputError(
                f"--truth {spec!r}: {', '.join(unknown)} not parameters of {name} for {key} "
                f"({', '.join(params)})"
            )
        params.update(given)
        out.delta[key], out.laws[key] = params, name
        shown = ", ".join(f"{p}={v:.4g}" for p, v in params.items())
        out.notes.append(f"{key}: truth {name} ({how}{', then ' + rest if rest else ''}): {shown}")
    return out


def _project(prior: Prior, key: str, law: Any, part: pd.DataFrame) -> dict[str, float]:
    """LAW's parameters closest (least squares in log delta) to the prior's delta at the runs."""
    base = base_of(prior.base)
    if law.uses_base and base is None:
        raise InputError(f"law {law.name} needs the prior's BF16 law, which has no A and alpha")
    y = np.log(prior.fitted_law(key).delta(Points.of(part)))
    engine = engine_for(law, part, (), base)
    theta = engine.fit(y, np.ones((1, len(y))), 10.0)  # Huber threshold 10: least squares
    names, values = engine.to_params(theta)
    if not np.isfinite(values).all():
        raise InputError(
            f"law {law.name} cannot be fitted to the prior's delta for {key} on this grid"
        )
    return dict(zip(names, map(float, values[0]), strict=True))
