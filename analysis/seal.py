"""Sealed predictions: written once by `predict --seal FILE` before the runs exist, checked by
every later `fit` against the runs that then exist.

A sealed file holds the prediction(s) with their intervals and law, the SHA-256 of the fit they
came from (fit.json and bootstrap.npz), the git commit of the code, the time, and a SHA-256 over
all of that (canonical JSON). It is created exclusively (an existing file is never replaced)
and made read-only; `fit` only reads it. A file whose hash does not match its content is
reported as tampered and its numbers are not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.law.formulas import group_label

from qat_sweep.common import current_umask, json_safe
from qat_sweep.record import software_versions

PREDICTIONS_DIR = "predictions"  # <sweep>/predictions/*.json: where fit looks for sealed files
SCHEMA = 1
KIND = "qat-sweep sealed predictions"
MATCH_RTOL = 0.02  # a run matches a prediction's N and D within 2 %
QUANTITIES = ("bf16_loss", "delta", "qat_loss")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def fit_hash(fit_dir: Path) -> str:
    """SHA-256 over the fit's fit.json then bootstrap.npz (when present), as bytes on disk."""
    digest = hashlib.sha256()
    for name in ("fit.json", "bootstrap.npz"):
        path = fit_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def seal(path: Path, predictions: list[dict[str, Any]], fit_dir: Path) -> dict[str, Any]:
    """Write a sealed file at `path`; InputError when a file is there already (a sealed file
    is never rewritten). Returns what was written."""
    path = Path(path)
    if path.exists():
        raise InputError(f"{path} exists: a sealed file is never rewritten; seal to a new file")
    versions = software_versions()
    body = {
        "schema": SCHEMA,
        "kind": KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": versions.get("git_sha"),
        "git_dirty": _git_dirty(),
        "qat_sweep_version": versions.get("qat-sweep"),
        "fit": {"dir": str(Path(fit_dir).resolve()), "sha256": fit_hash(Path(fit_dir))},
        "predictions": json_safe(predictions),
    }
    sealed = {"sealed": body, "sha256": content_hash(body)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(sealed, indent=1, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444 & ~current_umask())  # read-only; readable as the umask says
        try:
            os.link(tmp, path)  # fails if the name exists: never replaces a file
        except FileExistsError as err:
            raise InputError(f"{path} exists: a sealed file is never rewritten") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return sealed


def _git_dirty() -> bool | None:
    """Whether the code's checkout has uncommitted changes (None: not a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def read_sealed(path: Path) -> tuple[str, dict[str, Any] | None, str]:
    """(status, body, why): status ok, tampered (hash mismatch) or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        body, stated = data["sealed"], data["sha256"]
        if not isinstance(body, dict) or body.get("kind") != KIND:
            return "unreadable", None, "not a qat-sweep sealed prediction file"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return "unreadable", None, f"cannot read it: {err}"
    try:
        actual = content_hash(body)
    except (TypeError, ValueError) as err:
        return "tampered", body, f"its content cannot be hashed ({err})"
    if actual != stated:
        return "tampered", body, f"hash mismatch: stated {stated[:12]}..., content {actual[:12]}..."
    return "ok", body, ""


def _matches(table: pd.DataFrame, pred: dict[str, Any]) -> pd.DataFrame:
    usable = table[table["excluded"] == ""] if "excluded" in table else table
    setting = pred.get("setting")
    scheme, _, fmt = (setting or "bf16/bf16").partition("/")
    mask = (usable["scheme"] == scheme) & (usable["format"] == fmt)
    mask &= np.isclose(usable["n_params"], pred["n_params"], rtol=MATCH_RTOL, atol=0)
    mask &= np.isclose(usable["tokens"], pred["tokens"], rtol=MATCH_RTOL, atol=0)
    if setting and pred.get("group_size") is not None:
        wanted = group_label(pred["group_size"])
        mask &= usable["group_size"].map(group_label) == wanted
    return usable[mask]


def _compare(item: dict[str, Any] | None, measured: float | None) -> dict[str, Any] | None:
    if not item:
        return None
    out: dict[str, Any] = {"predicted": item.get("value"), "pi95": item.get("pi95")}
    out["ci95"] = item.get("ci95")
    if measured is None or not np.isfinite(measured):
        return {**out, "measured": None}
    pi = item.get("pi95") or item.get("ci95")
    out.update(
        measured=float(measured),
        error=float(item["value"] - measured),
        rel_error=float((item["value"] - measured) / measured) if measured else None,
        covered=bool(pi[0] <= measured <= pi[1]) if pi else None,
    )
    return out


def check_sealed(directory: Path | None, table: pd.DataFrame) -> list[dict[str, Any]]:
    """Every sealed file in `directory` with its predictions beside the runs that now exist:
    the measured value (mean over matching usable runs), the error and whether the 95 %
    prediction interval (one new run) covered it. Never writes anything."""
    if directory is None or not Path(directory).is_dir():
        return []
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        status, body, why = read_sealed(path)
        entry: dict[str, Any] = {"file": path.name, "status": status, "why": why}
        if status != "ok" or body is None:
            out.append(entry)
            continue
        entry.update(
            created=body.get("created"),
            git_commit=body.get("git_commit"),
            fit_sha256=(body.get("fit") or {}).get("sha256"),
            predictions=[],
        )
        for pred in body.get("predictions") or []:
            runs = _matches(table, pred)
            quantized = bool(pred.get("setting"))
            loss = float(runs["loss"].mean()) if len(runs) else None
            delta = None
            if quantized and len(runs) and "delta" in runs:
                finite = runs["delta"].to_numpy(float)
                finite = finite[np.isfinite(finite)]
                delta = float(finite.mean()) if finite.size else None
            entry["predictions"].append({
                "setting": pred.get("setting") or "bf16",
                "law": pred.get("law"),
                "n_params": pred["n_params"],
                "tokens": pred["tokens"],
                "group_size": pred.get("group_size"),
                "n_runs": len(runs),
                "run_keys": [str(k) for k in runs.get("run_key", pd.Series(dtype=str))][:10],
                "bf16_loss": _compare(pred.get("bf16_loss"), None if quantized else loss),
                "qat_loss": _compare(pred.get("qat_loss"), loss if quantized else None),
                "delta": _compare(pred.get("delta"), delta),
            })  # fmt: skip
        out.append(entry)
    return out
