"""Metrics of a run: `metrics.jsonl` in the run directory always, wandb as a mirror.

wandb never fails a run: any wandb error is reported once as a warning and logging goes on
into `metrics.jsonl`, which is what the analysis reads.

For dashboards each wandb run carries its identity flat in the config (`run_identity`) and a
`final/*` summary from its record (`final_summary`), including the gap to its BF16 twin
(`final/delta`, and `final/delta_excluded`: why the fit leaves the pair out, both as
`qat_sweep.delta` defines them for the fit) once both records exist: whichever of the pair
finishes second writes it (a BF16 twin finishing second updates its quantized twins through
`wandb_api` when they are online, and in a resumed offline fragment of their run when they
are offline; `qat-sweep sync` recomputes every summary from the records anyway).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from qat_sweep.common import format_count, fsync_dir, json_safe, write_atomic
from qat_sweep.delta import BF16, twin_gap
from qat_sweep.record import (
    IDENTITY_FIELDS,
    METRICS_NAME,
    metrics_rows,
    read_record,
    sweep_records,
)

_WANDB_FORBIDDEN = re.compile(r"[:;,#?/'\s]")


def wandb_id(sweep: str, run_key: str) -> str:
    """A wandb run id from the run identity, with only characters wandb accepts (<= 64)."""
    return _WANDB_FORBIDDEN.sub("-", f"{sweep}-{run_key}")[-64:]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep the rows that were logged when the checkpoint at `last_step` was saved.

    A resumed run logs the rest again: the steps after `last_step` and the evaluation at
    `last_step`, which runs after the save (the trainer evaluates again on resuming there).
    """
    path = Path(run_dir) / METRICS_NAME
    if path.exists():
        write_atomic(path, metrics_until(run_dir, last_step))


def metrics_until(run_dir: Path, last_step: int) -> str:
    """The rows a checkpoint at `last_step` covers, as the text of a metrics log."""
    path = Path(run_dir) / METRICS_NAME
    kept = []
    text = path.read_text(errors="replace") if path.exists() else ""
    for line, row in metrics_rows(path, text):
        step = row["step"]
        if step < last_step or (step == last_step and "val_loss" not in row):
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def resolve_wandb_mode(mode: str) -> str:
    """The mode a run logs to wandb with. `auto`: WANDB_MODE when it names a mode; else offline
    without an API key; else online. Online (asked for or chosen) falls back to offline when
    the server opens no connection within seconds (wandb.init would stall ~100 s, then fail).
    Each fallback is a warning: `qat-sweep sync` uploads offline runs later."""
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        if env is not None and env not in _WANDB_ENV_MODES:
            return _offline(f"WANDB_MODE={env!r} is none of {', '.join(_WANDB_ENV_MODES)}")
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists()
        mode = env or ("online" if has_key else _offline("no wandb API key found"))
    if mode != "online":
        return mode
    from qat_sweep import wandb_api

    if (unreachable := wandb_api.server_unreachable()) is not None:
        return _offline(f"the wandb server is unreachable: {unreachable}")
    return "online"


_WANDB_ENV_MODES = ("online", "offline", "disabled")


def _offline(why: str) -> str:
    warnings.warn(f"{why}: logging wandb offline (`qat-sweep sync` uploads it later)", stacklevel=3)
    return "offline"


def group_elems(group_size: Any, hidden_size: Any) -> int | None:
    """G as a number: the group size, or the reduction dimension (hidden size) per channel."""
    try:
        return int(hidden_size if str(group_size) == "channel" else group_size)
    except (TypeError, ValueError):  # BF16 (no group), or a config that failed to build
        return None


def run_identity(record: dict[str, Any]) -> dict[str, Any]:
    """Flat config keys for W&B's run table, scatter and parallel-coordinates panels.

    The record's identity fields (but `model`: that key is the config's model group) plus
    its place in the sweep. `group_size` is a label (`"32"`, `"channel"`, None for BF16) so
    panels can colour and group by it; `group_elems` is the number the law's log2(G) uses.
    """
    keys = [f for f in IDENTITY_FIELDS if f != "model"]
    keys += ["n_params_total", "run_key", "twin_key", "sweep", "subgrid"]
    group = record.get("group_size")
    return {key: record.get(key) for key in keys} | {
        "group_size": None if group is None else str(group),
        "group_elems": group_elems(group, record.get("hidden_size")),
        "holdout": bool(record.get("holdout")),
    }


def wandb_config(record: dict[str, Any]) -> dict[str, Any]:
    """The wandb config of a run: the nested resolved config plus the flat identity."""
    return {**(record.get("config") or {}), **run_identity(record)}


def twin_record(record: dict[str, Any], sweep_dir: Path) -> dict[str, Any] | None:
    """The record of a quantized run's BF16 twin in the same sweep, if any (whether it counts
    is delta.twin_gap's to say)."""
    twin = record.get("twin_key")
    if record.get("scheme") == BF16 or not twin:
        return None
    return read_record(Path(sweep_dir) / str(twin))


def quantized_twins(record: dict[str, Any], sweep_dir: Path) -> list[dict[str, Any]]:
    """Completed quantized records of the sweep whose BF16 twin is `record`."""
    if record.get("scheme") != BF16:
        return []
    return [
        other
        for found in sweep_records(sweep_dir)
        if (other := found.record) is not None
        and other["status"] == "completed"
        and other.get("scheme") != BF16
        and other.get("twin_key") == record["run_key"]
    ]


def final_summary(record: dict[str, Any], twin: dict[str, Any] | None) -> dict[str, Any]:
    """`final/*` summary keys of a run from its record (and its BF16 twin's, if found)."""
    metrics = record.get("metrics") or {}
    summary: dict[str, Any] = {
        "final/loss": record.get("loss"),  # smoothed final training loss: the paper's metric
        "final/val_loss": record.get("val_loss"),
        "final/tokens_trained": metrics.get("tokens_trained"),
        "final/mfu": metrics.get("mfu"),
        "final/status": record.get("status"),
    }
    if record.get("status") == "completed" and record.get("scheme") != BF16:
        summary |= delta_summary(record, twin)
    return summary


def delta_summary(record: dict[str, Any], twin: dict[str, Any] | None) -> dict[str, Any]:
    """`final/delta` of a completed quantized run as the fit takes it (delta.twin_gap), with
    `final/delta_excluded`: why the fit leaves the pair out ("" when it fits it), so a negative
    delta on the dashboard says it is not in the fit (the fit may still drop the run for a
    reason of its own row, such as a duplicate). A record without a twin_key (written before
    runs named their twin) gets neither: only the fit's table can pair it, by its cells."""
    if not record.get("twin_key"):
        return {}
    gap = twin_gap(record["loss"], twin, str(record["twin_key"]), record.get("execution"))
    values: dict[str, Any] = {"final/delta_excluded": gap.excluded}
    if not math.isnan(gap.delta):
        values |= {"final/bf16_loss": gap.bf16_loss, "final/delta": gap.delta}
        values |= dict.fromkeys(delta_facets(record.get("model"), record["tokens"]), gap.delta)
    return values


def delta_facets(model: Any, tokens: Any) -> list[str]:
    """Summary keys that hold a run's delta only in the panels of its facet: a wandb panel
    cannot filter runs, but it draws only the runs that have its y key. Delta against N at
    one D, against D at one N, against G in one (N, D) cell."""
    n, d = str(model), format_count(int(tokens))
    return [f"{DELTA_FACET}D={d}", f"{DELTA_FACET}N={n}", f"{DELTA_FACET}N={n},D={d}"]


DELTA_FACET = "facet/delta@"


def wandb_path(
    record: dict[str, Any], entity: str | None = None, project: str | None = None
) -> str | None:
    """`entity/project/id` of a record's wandb run, the arguments overriding the record's
    (None: the run had no wandb run, or no entity is known)."""
    info = record.get("wandb") or {}
    entity = entity or info.get("entity")
    if not info.get("id") or not entity:
        return None
    return f"{entity}/{project or info.get('project') or 'qat-sweep'}/{info['id']}"


_OWN_CACHE_ENV: dict[str, str] = {}  # wandb cache variables a Tracker set, not the user


class Tracker:
    """Appends metric rows to metrics.jsonl and mirrors them to a wandb run."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        wandb_settings: dict[str, Any],
        wandb_init: dict[str, Any],
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.wandb_run = None
        self.wandb_info: dict[str, Any] | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_NAME, "a")  # noqa: SIM115 (closed in finish)
        mode = resolve_wandb_mode(str(wandb_settings.get("mode", "auto")))
        if mode != "disabled":
            self._start_wandb(mode, wandb_settings, wandb_init)

    def _start_wandb(self, mode: str, settings: dict[str, Any], init: dict[str, Any]) -> None:
        from qat_sweep import wandb_api

        # wandb reads these itself: the chosen mode (an empty or unknown WANDB_MODE would
        # fail it), and its cache (service debug logs) in the run directory, not in $HOME
        os.environ["WANDB_MODE"] = mode
        for var, value in list(_OWN_CACHE_ENV.items()):  # an earlier run's of this process
            if os.environ.get(var) == value:
                del os.environ[var]
        chosen = wandb_api.cache_env(self.run_dir / "wandb")
        os.environ.update(chosen)
        _OWN_CACHE_ENV.update(chosen)
        try:
            import wandb

            self.wandb_run = wandb.init(
                mode=mode,
                project=settings.get("project") or "qat-sweep",
                entity=settings.get("entity"),
                dir=str(self.run_dir),
                resume="allow",
                reinit="finish_previous",
                **init,
            )
            self.wandb_run.define_metric("tokens")
            self.wandb_run.define_metric("*", step_metric="tokens")
            self.wandb_info = {
                "id": self.wandb_run.id,
                "project": self.wandb_run.project,
                "entity": self.wandb_run.entity or None,
                "mode": mode,
                "dir": str(Path(self.wandb_run.dir).parent),
            }
        except Exception as exc:  # a wandb failure never fails a run
            if mode == "online":  # an invalid key, a server gone: the run still logs offline
                warnings.warn(f"wandb online failed ({exc}): logging offline", stacklevel=2)
                import wandb

                wandb.teardown()  # the failed attempt holds the run id until its service ends
                self._start_wandb("offline", settings, init)
                return
            warnings.warn(f"wandb disabled for this run: {exc}", stacklevel=2)
            self.wandb_run = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = json_safe(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            try:
                self.wandb_run.log({k: v for k, v in row.items() if isinstance(v, int | float)})
            except Exception as exc:
                warnings.warn(f"wandb log failed, continuing without it: {exc}", stacklevel=2)
                self.wandb_run = None

    def sync(self) -> None:
        """Put the rows logged so far on disk: a checkpoint or record about to cover them is
        fsynced, and a node that dies takes its page cache (unsynced rows) with it."""
        if not self.enabled:
            return
        os.fsync(self._file.fileno())
        fsync_dir(self.run_dir)  # the file's own entry, when this try created it

    def finish(self, summary: dict[str, Any], exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self.enabled = False  # once: a failure after a completed finish must not finish again
        self._file.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(json_safe(summary))
                self.wandb_run.finish(exit_code=exit_code)
            except Exception as exc:
                warnings.warn(f"wandb finish failed: {exc}", stacklevel=2)

    def finish_run(self, record: dict[str, Any]) -> None:
        """Finish a completed run with its `final/*` summary; call after its record is written.

        Writing the record first makes the pair's second finisher see both records, so at
        least one of the two writes `final/delta`. Never raises: the run is already done.
        """
        if not self.enabled:
            return
        summary: dict[str, Any] = {"loss": record.get("loss"), "val_loss": record.get("val_loss")}
        others: list[dict[str, Any]] = []
        try:
            summary |= final_summary(record, twin_record(record, self.run_dir.parent))
            if self.wandb_info:  # this run logs to wandb: so, presumably, do its twins
                others = quantized_twins(record, self.run_dir.parent)
        except Exception as exc:  # unreadable neighbours: the sync step fills delta in later
            warnings.warn(f"wandb final summary incomplete: {exc}", stacklevel=2)
        self.finish(summary)
        if others:
            self._update_twins(record, others)

    def _update_twins(self, bf16: dict[str, Any], quantized: list[dict[str, Any]]) -> None:
        """This BF16 run finished after its quantized twins: write their deltas, on the server
        for online twins, and for offline twins into a resumed offline fragment of their run,
        which `qat-sweep sync` uploads after the run's own log (`wandb_api.sync_offline`)."""
        from qat_sweep import wandb_api

        entity = (self.wandb_info or {}).get("entity")
        for other in quantized:
            info = other.get("wandb") or {}
            values = json_safe(final_summary(other, bf16))
            try:
                if info.get("mode") == "offline" and info.get("id"):
                    self._offline_summary(other, values)
                elif (path := wandb_path(other, entity)) is not None:
                    wandb_api.update_summary(path, values)
            except Exception as exc:
                warnings.warn(
                    f"wandb summary of twin {other['run_key']} not updated: {exc}", stacklevel=2
                )

    def _offline_summary(self, other: dict[str, Any], values: dict[str, Any]) -> None:
        import wandb

        info = other["wandb"]
        run = wandb.init(
            mode="offline",
            id=info["id"],
            project=info.get("project") or "qat-sweep",
            entity=info.get("entity"),
            dir=str(self.run_dir.parent / str(other["run_key"])),
            resume="allow",
            reinit="finish_previous",
        )
        run.summary.update(values)
        run.finish()
