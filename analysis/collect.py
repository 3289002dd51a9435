"""Run records (files or wandb) -> one analysis table, BF16 pairing and quality control.

The run directory is the system of record (docs/architecture.md); wandb is read only as a mirror.
Every row that is left out of a fit is kept with a reason so the report can list it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import snap
from qat_sweep.analysis.law.formulas import CHANNEL_G, group_value, reduction_group

from qat_sweep.common import InputError as InputError  # the analysis's bad input: exit 2
from qat_sweep.common import parse_bool
from qat_sweep.delta import BF16, EXECUTION_FIELDS, twin_gap
from qat_sweep.record import IDENTITY_FIELDS, RECORD_NAME, sweep_records

REQUIRED = ("model", "n_params", "tokens", "scheme", "format", "group_size", "lr", "seed", "loss")
OPTIONAL = ("val_loss", "hidden_size")
RECORD_FIELDS = (
    "run_key",
    "sweep",
    "status",
    "error",
    *IDENTITY_FIELDS,  # as the trainer derived them (config.identity_fields): never re-derived
    "loss",
    "val_loss",
    "n_params_total",
    "subgrid",
    "holdout",
    "twin_key",
)
# Table columns that identify a run, for tables without run_key / twin_key (config.run_key()
# and twin_key() make those), and those a run shares with its BF16 twin. Twins pair by (N, D)
# cell (analysis/cells.py), so measured counts still pair; a duplicate is the same run twice
# (every identity column and the loss equal), while runs that only share a cell are replicates.
RUN_COLUMNS = ("n_params", "tokens", "scheme", "format", "group_size", "lr", "seed")
RUN_COLUMNS += ("start_fraction",)  # QAT after BF16: another start is another run
TWIN_COLUMNS = ("N_cell", "D_cell", "lr", "seed")
SITES = ("qkv", "o", "fc1", "fc2")
SITE_METRICS = ("kurtosis", "act_nmse", "weight_nmse")
SITE_METRICS += ("kurtosis_rotated", "act_nmse_unrotated", "weight_nmse_unrotated")  # rotation
# Site metric names in records written by older versions of the trainer.
LEGACY_METRICS = {"act_nmse": "act_rel_err", "weight_nmse": "weight_rel_err"}


def quant_columns(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Flatten metrics.quant.sites into columns like kurtosis_fc2 / act_nmse_qkv."""
    sites = ((metrics or {}).get("quant") or {}).get("sites") or {}
    out: dict[str, float] = {}
    for site in SITES:
        values = sites.get(site) or {}
        for metric in SITE_METRICS:
            value = values.get(metric, values.get(LEGACY_METRICS.get(metric, "")))
            out[f"{metric}_{site}"] = float(value) if value is not None else float("nan")
    return out


def record_to_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One run record -> one table row (record fields plus flattened metrics)."""
    row = {field: record.get(field) for field in RECORD_FIELDS}
    optim = (record.get("config") or {}).get("optim") or {}
    # a WSD run that never decays is a trunk other runs branch from, not a point of the law
    row["trunk"] = optim.get("schedule") == "wsd" and optim.get("decay_fraction") == 0
    row["schedule"] = optim.get("schedule")
    metrics = record.get("metrics") or {}
    row["tokens_per_s"] = metrics.get("tokens_per_s")
    model = ((record.get("config") or {}).get("model")) or {}
    if isinstance(model, Mapping) and model.get("ffn_size") and model.get("n_heads"):
        row["ffn_size"] = model["ffn_size"]  # the FC2 reduction dimension (--channel-g)
        row["kv_dim"] = model["hidden_size"] // model["n_heads"] * model["n_kv_heads"]
    execution = record.get("execution") or {}  # one column per setting, exec_<name>
    row |= {f"exec_{name}": execution.get(name) for name in EXECUTION_FIELDS}
    row.update(quant_columns(metrics))
    return row


def load_records(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows of every record in a sweep directory; a file that is no valid record is skipped
    with the reason, so the fit's report lists it."""
    if not root.is_dir():
        raise InputError(f"runs directory not found: {root}")
    found = sweep_records(root)
    if not found:
        raise InputError(f"no {RECORD_NAME} files under {root}")
    rows = [record_to_row(f.record) for f in found if f.record is not None]
    skipped = [
        {"run_key": f.run_dir.name, "reason": f"{RECORD_NAME} is {f.problem}"}
        for f in found
        if f.record is None
    ]
    return rows, skipped


def _unwrap(value: Any) -> Any:
    """wandb config entries are sometimes stored as {'value': x, 'desc': ...}."""
    if isinstance(value, Mapping) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge; values from `new` win, nested dicts are merged key by key."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
    return into


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted or slashed keys ('metrics.quant.sites.fc2.kurtosis') into nested dicts."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).replace("/", ".").split(".")
        nested: Any = _unwrap(value)
        for part in reversed(parts[1:]):
            nested = {part: nested}
        _merge(out, {parts[0]: nested})
    return out


def wandb_run_to_row(
    config: Mapping[str, Any], summary: Mapping[str, Any], run_id: str | None = None
) -> dict[str, Any]:
    """A wandb run's config and summary (which mirror the record) -> one table row.

    The summary wins over the config; dotted keys and {'value': ...} wrappers are accepted.
    """
    merged = _merge(_nest(config), _nest(summary))
    if isinstance(merged.get("model"), Mapping):  # qat-sweep's config: `model` is the group
        merged["model"] = merged["model"].get("name")
    merged.setdefault("run_key", run_id)
    merged.setdefault("status", "completed" if merged.get("loss") is not None else "failed")
    return record_to_row(merged)


def fetch_wandb(path: str) -> list[dict[str, Any]]:
    """Rows for every run of ENTITY/PROJECT through the wandb public API (needs network)."""
    if path.count("/") != 1:
        raise InputError(f"--wandb expects ENTITY/PROJECT, got {path!r}")
    import wandb

    api = wandb.Api()
    return [
        wandb_run_to_row(dict(run.config), dict(run.summary._json_dict), run.id)
        for run in api.runs(path)
    ]


def _normalise_group(value: Any) -> Any:
    """An int, 'channel' or None; anything unreadable comes back as its text (then excluded)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    text = str(value).strip()
    if text.lower() in ("channel", "per-channel", "per_channel", "token"):
        return "channel"
    if text.lower() in ("none", "nan", "null"):
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if np.isfinite(number) and number == int(number) else text


def _group_of(row: Any, channel_g: str) -> float:
    group_size = row.group_size
    if isinstance(group_size, str) and group_size != "channel":
        return float("nan")
    if group_size == "channel" and channel_g == "reduction":
        shapes = (row.hidden_size, row.ffn_size, row.kv_dim)
        return reduction_group(*shapes) if np.isfinite(shapes).all() else float("nan")
    return group_value(group_size, row.hidden_size)


def build_table(rows: Iterable[Mapping[str, Any]], channel_g: str = "hidden") -> pd.DataFrame:
    """Rows -> typed analysis table with `excluded` reasons ('' for usable rows) and G; per
    channel, G is the hidden size or (`channel_g="reduction"`) the layers' reduction
    dimensions (formulas.reduction_group)."""
    if channel_g not in CHANNEL_G:
        raise InputError(f"--channel-g {channel_g}: allowed: {', '.join(CHANNEL_G)}")
    table = pd.DataFrame(list(rows))
    if table.empty:
        raise InputError("no runs found")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"table lacks required columns: {', '.join(missing)}")
    optional = ("run_key", "status", "holdout", "hidden_size", "val_loss", "twin_key", "trunk")
    for column in (*optional, "schedule"):
        if column not in table.columns:
            table[column] = None
    # QAT after BF16: tables and records from before it hold QAT from step 0
    start = table.get("start_fraction", pd.Series(0.0, index=table.index))
    table["start_fraction"] = pd.to_numeric(start, errors="coerce").fillna(0.0).astype(float)
    table["trunk"] = table["trunk"].map(_truthy)
    for column in ("ffn_size", "kv_dim"):
        table[column] = pd.to_numeric(table.get(column), errors="coerce")
    table["status"] = table["status"].fillna("completed").astype(str)
    table["run_key"] = [
        str(k) if k is not None and k == k else f"row{i}" for i, k in enumerate(table["run_key"])
    ]
    for column in ("n_params", "tokens", "lr", "seed", "loss", "val_loss", "hidden_size"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["scheme"] = table["scheme"].astype(str).str.lower()
    table["format"] = table["format"].astype(str).str.lower()
    table["group_size"] = [_normalise_group(v) for v in table["group_size"]]
    table["holdout"] = table["holdout"].map(_truthy)
    table["G"] = [_group_of(row, channel_g) for row in table.itertuples()]
    table["N_cell"], table["D_cell"] = snap(table["n_params"]), snap(table["tokens"])
    table["fit_key"] = (
        table["scheme"]
        + "/"
        + table["format"]
        + [
            setting_suffix(s, f)
            for s, f in zip(table["schedule"], table["start_fraction"], strict=True)
        ]
    )
    table["excluded"] = [_row_problem(r, channel_g) for r in table.itertuples()]
    _mark_duplicates(table)
    return table


def setting_suffix(schedule: Any, start_fraction: float) -> str:
    """What a fit setting's name adds for a run trained otherwise than the paper (cosine, QAT
    from step 0): ``w4a4/int4-wsd``, ``w4a4/int4-from0.5``. Each schedule and QAT start gets
    its own delta law; the paper's settings keep their names."""
    suffix = "-wsd" if schedule == "wsd" else ""
    return suffix + (f"-from{start_fraction:g}" if start_fraction else "")


def _truthy(value: Any) -> bool:
    """A table's holdout cell: the CLI's booleans; empty or anything else is False."""
    try:
        return parse_bool(value)
    except InputError:  # None, NaN, ''
        return False


def _row_problem(row: Any, channel_g: str) -> str:
    """Why a row cannot enter a fit ('' if it can); checked before any fitting."""
    if row.status != "completed":
        return f"status {row.status}"
    if row.trunk:
        return "WSD trunk (its learning rate never decays): the runs that branch from it count"
    for column in ("loss", "n_params", "tokens"):
        value = getattr(row, column)
        if not np.isfinite(value):
            return f"{column} missing or not a finite number"
        if value <= 0:
            return f"{column} = {value:g}: must be > 0"
    if row.scheme != "bf16":
        if isinstance(row.group_size, str) and row.group_size != "channel":
            return f"group_size {row.group_size!r}: allowed an integer >= 2 or channel"
        if row.group_size == "channel" and not np.isfinite(row.hidden_size):
            return "per-channel group without hidden_size (G = hidden size)"
        if row.group_size == "channel" and channel_g == "reduction" and not np.isfinite(row.G):
            return "per-channel group without ffn_size and kv_dim (--channel-g reduction)"
        if not np.isfinite(row.G):
            return "missing group_size"
        if row.G < 2:
            return f"group size {row.G:g}: must be >= 2 (log2 G > 0)"
    return ""


def _mark_duplicates(table: pd.DataFrame) -> None:
    """The same measurement twice (identity and loss equal): keep the first run_key, exclude
    the others. Runs that share a cell but differ (seed, N or D within the cell tolerance, or
    their loss) are replicates: all enter the fit, and the bootstrap draws them with their cell.

    Records of qat-sweep carry `twin_key`, which covers every non-quant setting (schedule,
    data...), so runs that differ only there are not duplicates of each other.
    """
    usable = table[table["excluded"] == ""]
    columns = [*RUN_COLUMNS, "twin_key", "loss"]
    keys = ["|".join(map(repr, vals)) for vals in usable[columns].itertuples(index=False)]
    order = usable.assign(_key=keys).sort_values("run_key")
    first = order.drop_duplicates("_key")
    for index, row in order.iterrows():
        if index not in first.index:
            keep = first.loc[first["_key"] == row["_key"], "run_key"].iloc[0]
            table.loc[index, "excluded"] = f"duplicate of {keep} (same run and loss)"


def twin_index(table: pd.DataFrame, usable: np.ndarray | None = None) -> np.ndarray:
    """Position of each quantized row's BF16 twin; -1 for none and for BF16 rows.

    A row that names its twin (`twin_key`, as records do) pairs with exactly that run; other
    rows pair on TWIN_COLUMNS. Only BF16 rows marked in `usable` (default: all) are twins.
    """
    is_bf16 = (table["scheme"] == "bf16").to_numpy()
    twins = np.flatnonzero(is_bf16 if usable is None else is_bf16 & usable)
    columns = [tuple(k) for k in table[list(TWIN_COLUMNS)].to_numpy()]
    by_columns = {columns[i]: i for i in twins}
    run_keys = table["run_key"].to_numpy() if "run_key" in table else np.full(len(table), None)
    by_run_key = {run_keys[i]: i for i in twins}
    names = table["twin_key"].to_numpy() if "twin_key" in table else np.full(len(table), None)
    return np.array(
        [
            -1
            if is_bf16[i]
            else by_run_key.get(names[i], -1)
            if _names_twin(names[i])
            else by_columns.get(columns[i], -1)
            for i in range(len(table))
        ],
        dtype=int,
    )


def _names_twin(twin_key: Any) -> bool:
    return isinstance(twin_key, str) and twin_key != ""


def pair_deltas(table: pd.DataFrame) -> pd.DataFrame:
    """Give each quantized row its BF16 twin's loss and delta (delta.twin_gap); a usable row
    that the pair leaves out of the fit is marked with the reason."""
    table = table.copy()
    twin = twin_index(table, (table["excluded"] == "").to_numpy())
    rows = table.to_dict("records")
    for row in rows:
        row["execution"] = {name: row.get(f"exec_{name}") for name in EXECUTION_FIELDS}
    gaps = [
        twin_gap(
            row["loss"], rows[t] if t >= 0 else None, _twin_name(row["twin_key"]), row["execution"]
        )
        if row["scheme"] != BF16
        else None
        for row, t in zip(rows, twin, strict=True)
    ]
    table["bf16_loss"] = [gap.bf16_loss if gap else np.nan for gap in gaps]
    table["delta"] = [gap.delta if gap else np.nan for gap in gaps]
    table["excluded"] = [
        row["excluded"] or (gap.excluded if gap else "")
        for row, gap in zip(rows, gaps, strict=True)
    ]
    return table


def _twin_name(twin_key: Any) -> str:
    """The twin a row looks for, as its exclusion names it."""
    return twin_key if _names_twin(twin_key) else "same N and D cells, lr, seed"


def read_table(path: Path) -> list[dict[str, Any]]:
    """Read an analysis table CSV (e.g. a previous runs.csv); derived columns are recomputed."""
    if not path.is_file():
        raise InputError(f"table not found: {path}")
    try:
        raw = pd.read_csv(path, dtype={"group_size": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read table {path}: {err}") from err
    if raw.empty:
        raise InputError(f"table {path} has no rows (columns: {', '.join(map(str, raw.columns))})")
    derived = ["G", "fit_key", "excluded", "bf16_loss", "delta", "N_cell", "D_cell"]
    return raw.drop(columns=[c for c in derived if c in raw.columns]).to_dict("records")


def excluded_list(table: pd.DataFrame, skipped: list[dict[str, str]]) -> list[dict[str, str]]:
    """fit.json `excluded`: skipped files plus every excluded table row with its reason."""
    rows = table[table["excluded"] != ""]
    return skipped + [{"run_key": r.run_key, "reason": r.excluded} for r in rows.itertuples()]
