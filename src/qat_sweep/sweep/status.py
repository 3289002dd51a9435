"""What `qat-sweep status` shows: where each run is, from its run directory and the scheduler.

A running run's progress comes from the tail of its ``metrics.jsonl`` (the trainer appends a
row per step, with tokens/s every ``logger.progress_every_steps``) and its restart count from
the trainer's run lock (``locks.run_starts``); a pending one's reason from squeue (``%r``).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qat_sweep.common import format_count, format_duration, format_loss
from qat_sweep.locks import run_starts
from qat_sweep.record import METRICS_NAME, metrics_rows
from qat_sweep.sweep.jobs import STATUSES
from qat_sweep.sweep.spec import PlannedRun
from qat_sweep.sweep.summary import (
    WIDTH,
    Column,
    clip,
    counts_line,
    grouped_table,
    reason_groups,
    share,
)

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


def _progress_cell(info: dict[str, Any] | None) -> str:
    if info is None:
        return "not started"
    loss = info["loss_smoothed"]
    speed = info["tokens_per_s"]
    return (
        f"step {info['step']}/{info['total_steps']} "
        f"({100 * info['step'] / info['total_steps']:.0f}%) "
        f"{format_count(info['tokens'], 3)} tok, loss {format_loss(loss)}, "
        f"{format_count(round(speed), 3) if speed else '-'} tok/s, "
        f"ETA {format_duration(info['eta_s'])}, restarts {info['restarts']}"
        if loss is not None
        else f"step {info['step']}/{info['total_steps']}"
    )


def _short_progress(info: dict[str, Any] | None) -> str:
    """A running run's progress in the width the summary screen leaves beside its run_key."""
    if info is None or info["loss_smoothed"] is None:
        return "starting"
    return (
        f"{100 * info['step'] / info['total_steps']:.0f}% loss {format_loss(info['loss_smoothed'])}"
        f" ETA {format_duration(info['eta_s'])} restarts {info['restarts']}"
    )


def _done_flops(run: PlannedRun, info: dict[str, Any] | None) -> float:
    """The model FLOPs of a run already spent: all of a completed run, a running run's share."""
    if run.status == "completed":
        return run.model_flops
    if run.status == "running" and info:
        return run.model_flops * min(1.0, info["tokens"] / run.tokens)
    return 0.0


def sweep_eta(
    runs: list[PlannedRun], progress_of: dict[str, dict[str, Any] | None]
) -> float | None:
    """Seconds until the whole sweep is done if the runs training now keep their pace and as
    many runs keep training: the FLOPs left over the FLOPs per second being spent now."""
    rate = sum(
        info["tokens_per_s"] * r.model_flops / r.tokens
        for r in runs
        if (info := progress_of.get(r.run_key)) and info["tokens_per_s"]
    )
    left = sum(r.model_flops - _done_flops(r, progress_of.get(r.run_key)) for r in runs)
    return left / rate if rate > 0 else None


def summary(runs: list[PlannedRun], progress_of: dict[str, dict[str, Any] | None]) -> str:
    """Two lines across the sweep: the counts; the share of its GPU-hours done (completed runs
    and running runs' share), counted by the model FLOPs that plan's GPU-hours use, so a small
    model's lm_head and attention count too (6ND would undercount them), and the sweep's ETA."""
    total = sum(r.model_flops for r in runs) or 1.0
    done = sum(_done_flops(r, progress_of.get(r.run_key)) for r in runs)
    eta = sweep_eta(runs, progress_of)
    running = sum(r.status == "running" for r in runs)
    pace = (
        f"sweep ETA {format_duration(eta)} at the pace of the {running} running run(s)"
        if eta is not None
        else "no sweep ETA: nothing is training now"
    )
    return (
        f"{len(runs)} runs: {counts_line(runs)}\n"
        f"{100 * done / total:.1f}% of the sweep's GPU-hours done; {pace}"
    )


def status_rows(runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """``status --json``: the plan rows plus progress and the pending reason."""
    rows = []
    for run in runs:
        info = progress(run) if run.status in ("running", "failed") else None
        rows.append({**run.row(), "progress": info, "reason": run.reason})
    return rows


_WORDS = {"completed": "done"}  # column titles short enough for 100 columns


def _count(status: str) -> Callable[[list[PlannedRun]], str]:
    return lambda group: str(sum(r.status == status for r in group))


MAX_RUNNING_SHOWN = 6  # running runs on the summary screen; `--runs` lists all


def status_summary(runs: list[PlannedRun], relaunch: str, every_run: str) -> str:
    """The default screen: counts, progress and ETA; per sub-grid and per model; the runs
    training now; pending and failed runs grouped by reason, one line each. ``relaunch`` and
    ``every_run`` are the commands a user runs next (with this command's overrides)."""
    progress_of = {r.run_key: progress(r) for r in runs if r.status == "running"}

    def done_share(group: list[PlannedRun]) -> str:
        spent = sum(_done_flops(r, progress_of.get(r.run_key)) for r in group)
        return share(spent, sum(r.model_flops for r in group))

    columns = [
        Column("runs", 4, lambda g: str(len(g))),
        *(  # every job state, `unknown` and any later one included
            Column(_WORDS.get(status, status), len(_WORDS.get(status, status)), _count(status))
            for status in STATUSES
        ),
        Column("GPU-h done", 10, done_share),
    ]
    lines = [
        *summary(runs, progress_of).splitlines(),
        "",
        *grouped_table(runs, lambda r: r.subgrid, columns, "sub-grid"),
        "",
        *grouped_table(runs, lambda r: r.model, columns, "model"),
    ]
    training = sorted(
        (r for r in runs if r.status == "running"),
        key=lambda r: -((progress_of.get(r.run_key) or {}).get("eta_s") or 0),
    )
    if training:
        lines += ["", f"running ({len(training)}, longest ETA first):"]
        for r in training[:MAX_RUNNING_SHOWN]:
            lines.append(clip(f"  {r.run_key}  {_short_progress(progress_of.get(r.run_key))}"))
        if len(training) > MAX_RUNNING_SHOWN:
            lines.append(f"  ... and {len(training) - MAX_RUNNING_SHOWN} more")
    pending = [r for r in runs if r.status == "pending"]
    if pending:
        lines += ["", f"pending ({len(pending)}), by the scheduler's reason:"]
        lines += reason_groups(pending, lambda r: _pending_text(r, progress_of))
    unknown = [r for r in runs if r.status == "unknown"]
    if unknown:
        lines += ["", f"unknown ({len(unknown)}): the scheduler did not answer; queued or not:"]
        lines += reason_groups(unknown, lambda r: r.reason)
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        lines += ["", f"failed ({len(failed)}), by reason; rerun them with:"]
        lines += [f"  {relaunch}", *reason_groups(failed, lambda r: r.error)]
    # hints are never cut: they are pasted as printed
    return "\n".join([*lines, "", "each run and its log:", f"  {every_run}"])


def _pending_text(run: PlannedRun, progress_of: dict[str, dict[str, Any] | None]) -> str:
    """A pending run's reason; a held run that trained before was requeued, one that never
    trained waits for the begin time its user asked for."""
    reason = run.reason or "queued (no reason given by the scheduler yet)"
    if reason.startswith("BeginTime"):
        started = run.run_dir.joinpath(METRICS_NAME).exists()
        reason += " (requeued: it trained before)" if started else " (sbatch --begin)"
    return reason


def status_table(runs: list[PlannedRun]) -> str:
    """``--runs``: the summary line, every run that is not completed, each failure with its log."""
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


def one_screen(text: str, rows: int) -> str:
    """The first lines of ``text`` that fit a terminal of ``rows`` lines, saying what was cut."""
    lines = text.splitlines()
    if len(lines) <= rows:
        return text
    return "\n".join([*lines[: rows - 1], f"... {len(lines) - rows + 1} more lines (--runs)"])


def watch(render: Callable[[], str], every_s: float, rounds: int | None = None) -> None:
    """Redraw ``render()`` in place every ``every_s`` seconds until interrupted (Ctrl-C), cut
    to the terminal's height so that the screen never scrolls."""
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    n = 0
    try:
        while rounds is None or n < rounds:
            rows = shutil.get_terminal_size((WIDTH, 40)).lines - 2  # the blank and footer lines
            text = one_screen(render(), rows)
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
