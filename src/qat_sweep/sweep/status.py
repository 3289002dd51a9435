"""What `qat-sweep status` shows: where each run is, from its run directory and the scheduler.

A running run's progress comes from the tail of its ``metrics.jsonl`` (the trainer appends a
row per step, with tokens/s every ``logger.progress_every_steps``) and its restart count from
the trainer's run lock (``locks.run_starts``); a pending one's reason from squeue (``%r``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qat_sweep.common import format_count
from qat_sweep.locks import run_starts
from qat_sweep.record import METRICS_NAME, metrics_rows
from qat_sweep.sweep.jobs import STATUSES
from qat_sweep.sweep.spec import PlannedRun

_TAIL_BYTES = 64 * 1024  # enough rows to find the last tokens/s (every 10 steps by default)


def _tail_rows(path: Path) -> list[dict[str, Any]]:
    """The last rows of a metrics file: a torn last line is dropped, a malformed row skipped
    with a warning naming the file and line (record.metrics_rows)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            start = max(0, size - _TAIL_BYTES)
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    if start:  # the tail starts inside a line: drop that part
        skipped, _, text = text.partition("\n")
        start += len(skipped.encode()) + 1

    def first_line() -> int:  # only to name a malformed row: counting reads the whole head
        with open(path, "rb") as f:
            return f.read(start).count(b"\n") + 1

    return [row for _, row in metrics_rows(path, text, first_line)]


def total_steps(run: PlannedRun) -> int:
    """Optimizer steps of the run, as the trainer counts them (tokens // global batch)."""
    batch = int(run.config["optim"]["batch_seqs"]) * int(run.config["train"]["seq_len"])
    return max(1, run.tokens // batch)


def progress(run: PlannedRun) -> dict[str, Any] | None:
    """Step, tokens, smoothed loss, tokens/s, ETA and restarts of a run that has started."""
    rows = [r for r in _tail_rows(run.run_dir / METRICS_NAME) if "loss" in r]
    if not rows:
        return None
    last = rows[-1]
    speed = next((r["tokens_per_s"] for r in reversed(rows) if r.get("tokens_per_s")), None)
    tokens = int(last.get("tokens") or 0)
    eta = (run.tokens - tokens) / speed if speed else None
    try:
        age = time.time() - (run.run_dir / METRICS_NAME).stat().st_mtime
    except OSError:
        age = None
    return {
        "step": int(last["step"]),
        "total_steps": total_steps(run),
        "tokens": tokens,
        "loss_smoothed": last.get("loss_smoothed"),
        "tokens_per_s": speed,
        "eta_s": eta,
        "restarts": max(0, run_starts(run.run_dir) - 1),
        "updated_s_ago": age,
    }


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _progress_cell(info: dict[str, Any] | None) -> str:
    if info is None:
        return "not started"
    loss = info["loss_smoothed"]
    speed = info["tokens_per_s"]
    return (
        f"step {info['step']}/{info['total_steps']} "
        f"({100 * info['step'] / info['total_steps']:.0f}%) "
        f"{format_count(info['tokens'])} tok, loss {loss:.4f}, "
        f"{format_count(round(speed)) if speed else '-'} tok/s, ETA {_duration(info['eta_s'])}, "
        f"restarts {info['restarts']}"
        if loss is not None
        else f"step {info['step']}/{info['total_steps']}"
    )


def summary(runs: list[PlannedRun], progress_of: dict[str, dict[str, Any] | None]) -> str:
    """One line across the sweep: the share of its GPU-hours done (completed runs and running
    runs' share), counted by the model FLOPs that plan's GPU-hours use, so a small model's
    lm_head and attention count too (6ND would undercount them)."""
    total = sum(r.model_flops for r in runs) or 1.0
    done = sum(r.model_flops for r in runs if r.status == "completed")
    for run in runs:
        info = progress_of.get(run.run_key)
        if run.status == "running" and info:
            done += run.model_flops * min(1.0, info["tokens"] / run.tokens)
    etas = [i["eta_s"] for i in progress_of.values() if i and i["eta_s"] is not None]
    shown = [s for s in STATUSES if s != "unknown" or any(r.status == s for r in runs)]
    counts = ", ".join(f"{s} {sum(r.status == s for r in runs)}" for s in shown)
    line = f"{len(runs)} runs: {counts}; {100 * done / total:.1f}% of the sweep's GPU-hours done"
    line += f"; running runs end in {_duration(max(etas))}" if etas else ""
    silent = next((r.reason for r in runs if r.status == "unknown"), None)
    return line + (f"\nunknown: the scheduler did not answer, {silent}" if silent else "")


def status_rows(runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """``status --json``: the plan rows plus progress and the pending reason."""
    rows = []
    for run in runs:
        info = progress(run) if run.status in ("running", "failed") else None
        rows.append({**run.row(), "progress": info, "reason": run.reason})
    return rows


def status_table(runs: list[PlannedRun]) -> str:
    """Summary, then every run that is not completed, then each failure once with its log."""
    progress_of = {r.run_key: progress(r) for r in runs if r.status == "running"}
    lines = [summary(runs, progress_of)]
    open_runs = [r for r in runs if r.status not in ("completed", "failed")]
    if open_runs:
        lines += ["", f"{'status':<9} {'run_key':<58} {'job':<12} progress / reason"]
        for r in open_runs:
            detail = (
                _progress_cell(progress_of.get(r.run_key))
                if r.status == "running"
                else (r.reason or "-")
            )
            lines.append(f"{r.status:<9} {r.run_key:<58} {r.job_id or '-':<12} {detail}")
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        lines += ["", "failed runs: `qat-sweep launch` reruns them"]
        for r in failed:
            lines += [f"  {r.run_key}: {r.error}", f"    log: {r.log or '-'}"]
    return "\n".join(lines)


def watch(render: Callable[[], str], every_s: float, rounds: int | None = None) -> None:
    """Redraw ``render()`` in place every ``every_s`` seconds until interrupted (Ctrl-C)."""
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    n = 0
    try:
        while rounds is None or n < rounds:
            text = render()
            stamp = time.strftime("%H:%M:%S")
            print(
                f"{clear}{text}\n\n[{stamp}] refreshing every {every_s:g} s; Ctrl-C stops",
                flush=True,
            )
            n += 1
            if rounds is None or n < rounds:
                time.sleep(every_s)
    except KeyboardInterrupt:
        pass
