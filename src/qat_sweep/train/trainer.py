"""One QAT or BF16 training run: `qat-sweep train key=value ...` / `python -m qat_sweep.train`.

One resolved config in, one run directory out (`<paths.runs>/<sweep>/<run_key>/`): metrics.jsonl,
periodic atomic checkpoints, and at the end an atomically written `result.json`. Running it
again resumes from the checkpoint, or returns at once when the record says `completed`.

`train()` guards the run directory and turns any failure into a record; `Trainer.run()` is the
loop: `train_step()`, at the boundaries `settle()` / `save()` / `evaluate()`, then `finish()`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from qat_sweep.common import (
    InputError,
    json_safe,
    resolve_device,
    switch,
    write_atomic,
    write_json_atomic,
)
from qat_sweep.config.checks import place_problems
from qat_sweep.config.compose import compose_run, identity_fields, run_dir
from qat_sweep.data.batches import BatchSchedule, val_batches
from qat_sweep.data.prefetch import Prefetcher
from qat_sweep.estimates.flops import flops_per_token, mfu, peak_flops
from qat_sweep.locks import LockHeld, hold, run_lock
from qat_sweep.model.instrument import site_stats
from qat_sweep.model.layers import set_quantizing, start_quantizing
from qat_sweep.model.presets import CONF_DIR
from qat_sweep.model.transformer import build_model, compile_blocks, compile_enabled
from qat_sweep.record import (
    IDENTITY_FIELDS,
    METRICS_NAME,
    RECORD_NAME,
    branch_checkpoint_path,
    branch_release_path,
    read_record,
)
from qat_sweep.train.checkpoint import (
    BRANCH_METRICS,
    checkpoint_problem,
    keep_for_branches,
    load_branch,
    load_latest,
    remove_checkpoint,
    save_checkpoint,
)
from qat_sweep.train.distributed import (
    all_reduce_mean,
    any_rank,
    any_ranks,
    apply_activation_checkpointing,
    barrier,
    setup_distributed,
    teardown_distributed,
    unsharded,
    wrap_model,
)
from qat_sweep.train.preemption import (
    Preempted,
    install_signal_handlers,
    release_held_jobs,
    requeue_slurm_job,
    restore_signal_handlers,
    stop_signal,
)
from qat_sweep.train.rebuild import (
    parent_config,
    parent_passed,
    publish,
    rebuild_lock_path,
    rebuild_source,
    scratch_dir,
    stage,
)
from qat_sweep.train.recipe import (
    SmoothedLoss,
    lr_multiplier,
    make_optimizer,
    mean_loss,
    train_step,
)
from qat_sweep.train.run_record import base_record, execution_record, run_metrics, wandb_init
from qat_sweep.train.setup import RunSetup, resolve_execution, validate_run
from qat_sweep.train.state import TrainState
from qat_sweep.train.tracking import Tracker, metrics_until, truncate_metrics

Result = TypeVar("Result")
EXIT_FAILED, EXIT_DIVERGED = 1, 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another trainer holds the run directory


class Diverged(RuntimeError):
    """The loss became NaN/Inf or exceeded train.max_loss."""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) one run; returns its record. Never raises for a failed run;
    InputError (nothing written) for a run directory that would leave paths.runs."""
    if problems := place_problems(cfg):
        raise InputError("; ".join(problems))
    out_dir = run_dir(cfg)
    existing = _completed(cfg, out_dir)
    if existing is not None:
        return existing
    # One trainer per run directory: a second one raises LockHeld naming the holder, before it
    # touches checkpoint or metrics.
    with run_lock(out_dir):
        existing = _completed(cfg, out_dir)  # the previous holder may have just finished it
        if existing is not None:
            return existing
        setup: RunSetup | None = None
        try:
            setup = validate_run(cfg)
            return Trainer(cfg, setup, out_dir).run()
        except Exception as exc:  # Preempted is a SystemExit: it passes through to SLURM
            done = read_record(out_dir)
            if done is not None and done["status"] == "completed":  # it failed after the record
                print(f"[qat-sweep] run {cfg.run_key} completed; then {exc!r}", file=sys.stderr)
                return done
            record = base_record(cfg, setup)
            record["status"] = "diverged" if isinstance(exc, Diverged) else "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["metrics"]["traceback"] = traceback.format_exc(limit=20)
            unwritten = ""
            if int(os.environ.get("RANK", "0")) == 0:
                try:
                    write_json_atomic(out_dir / RECORD_NAME, record)
                except OSError as e:  # the disk that failed the run refuses its record too
                    unwritten = f" (its record could not be written: {e})"
            print(
                f"[qat-sweep] run {cfg.run_key} {record['status']}: {record['error']}{unwritten}",
                file=sys.stderr,
            )
            return record


def _completed(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """The run's completed record, if any; checkpoints a kill right after it left are removed."""
    existing = read_record(out_dir)
    if existing is None or existing["status"] != "completed":
        return None
    expected = identity_fields(cfg, strict=False)
    if differs := [f for f in IDENTITY_FIELDS if existing[f] != expected[f]]:
        print(
            f"[qat-sweep] {out_dir / RECORD_NAME} does not describe run {cfg.run_key} "
            f"({', '.join(f'{f} {existing[f]!r} != {expected[f]!r}' for f in differs)}): "
            "training the run, its record will replace that one",
            file=sys.stderr,
        )
        return None
    if not cfg.checkpoint.keep_on_success and int(os.environ.get("RANK", "0")) == 0:
        remove_checkpoint(out_dir)
    return existing


class Trainer:
    """One run's model, optimizer, data and state on this process, and the steps of its loop."""

    def __init__(
        self, cfg: DictConfig, setup: RunSetup, out_dir: Path, sweep_dir: Path | None = None
    ) -> None:
        self.cfg, self.setup, self.out_dir = cfg, setup, out_dir
        self.sweep_dir = sweep_dir or out_dir.parent  # where the parent runs are
        self.device = resolve_device(cfg.train.device, "train.device")
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        self.dist = setup_distributed(self.device)
        self.dev = self.dist.device
        autocast = switch(cfg.train.autocast_bf16, "train.autocast_bf16") != "false"
        self.autocast = self.device == "cuda" and autocast
        self.execution = resolve_execution(cfg, setup, self.dist, self.device)
        self.n_micro = setup.global_batch // self.dist.world_size // self.execution.micro
        self.tokens_per_step = setup.global_batch * setup.seq_len
        self._build_model()
        self._build_data()
        self.state = TrainState(str(cfg.run_key), SmoothedLoss(setup.smoothing_window))
        self.inherited: list[dict[str, Any]] = []  # a branch's rows up to its branch step
        self.moved_aside = self._resume()
        if self.dist.is_main:  # rows after the checkpoint (or a failed try) go
            truncate_metrics(out_dir, self.state.step)
        # QAT after BF16: the BF16 computation until the first quantized step
        set_quantizing(self.model, self.state.step >= setup.quant_start)
        self.branch_steps = {int(s) for s in cfg.checkpoint.branch_steps}
        self.record = base_record(cfg, setup)
        self.tracker = self._tracker()
        self.record["wandb"] = self.tracker.wandb_info
        self._log(self.inherited)  # into metrics.jsonl and the run's own wandb history
        self.flops_token = flops_per_token(setup.model_cfg, setup.seq_len, setup.vocab_size)
        self.peak = peak_flops(torch.device(self.dev)) if self.device == "cuda" else None
        self.progress_every = int(cfg.logger.progress_every_steps)
        self.save_every_s = float(cfg.checkpoint.every_minutes) * 60
        # Steps whose loss and gradient norm are still on the device: they are read in one host
        # sync at the progress, eval and checkpoint steps (and the last), not every step.
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float, int]] = []

    def _build_model(self) -> None:
        cfg, setup = self.cfg, self.setup
        torch.manual_seed(int(cfg.seed))  # same init for BF16 and QAT twins
        self.model = build_model(setup.model_cfg, setup.quant, vocab_size=setup.vocab_size)
        self.model = self.model.to(self.dev)
        if self.execution.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.compiled = compile_enabled(cfg.train.compile, self.device)
        if self.compiled:
            compile_blocks(self.model)  # per block, after activation checkpointing, before wrapping
        # FSDP shards in place; quantizer parameters have no gradient before quantizing starts
        unused = setup.quant_start > 0
        self.train_model = wrap_model(self.model, self.execution.parallelism, self.dist, unused)
        self.optimizer = make_optimizer(self.model, cfg.optim)

    def _build_data(self) -> None:
        cfg, setup = self.cfg, self.setup
        self.schedule = BatchSchedule(
            setup.data.train, setup.seq_len, setup.global_batch, int(cfg.seed)
        )
        self.eval_batches = val_batches(
            setup.data.val, setup.seq_len, int(cfg.eval.batch_seqs), int(cfg.eval.batches)
        )
        self.epochs = self.schedule.epochs_for(setup.total_steps)
        if self.epochs > 1 and self.dist.is_main:
            print(
                f"[qat-sweep] warning: {setup.tokens:,} tokens are {self.epochs:.2f} passes over "
                f"the {setup.data.source} training split: data repeats",
                file=sys.stderr,
            )

    def _resume(self) -> list[str]:
        """Load the newest readable checkpoint, if any, else the parent's branch checkpoint;
        returns the corrupt ones moved aside."""
        checkpoint, moved_aside = load_latest(self.out_dir, self.model, self.optimizer, self.dist)
        if checkpoint is None and self.cfg.branch.parent:
            moved_aside += self._branch()
        elif checkpoint is not None:
            if checkpoint["run_key"] != self.cfg.run_key:
                raise ValueError(
                    f"checkpoint in {self.out_dir} belongs to run {checkpoint['run_key']}"
                )
            self.state.load_state_dict(checkpoint)
            if self.dist.is_main:
                print(
                    f"[qat-sweep] resuming {self.cfg.run_key} at step "
                    f"{self.state.step}/{self.setup.total_steps}"
                )
        return moved_aside

    def _branch(self) -> list[str]:
        """Start from the parent's checkpoint at the branch step, with the parent's metrics rows
        up to it as this run's own: the smoothed loss replayed with this run's window, as it
        would have been computed had this run trained those steps itself. A lost or unreadable
        branch checkpoint is rebuilt first; returns where an unreadable one was moved."""
        parent, step = str(self.cfg.branch.parent), int(self.cfg.branch.step)
        parent_dir = self.sweep_dir / parent
        path = branch_checkpoint_path(parent_dir, step)
        loaded = load_branch(path, self.model, self.optimizer, self.dist)
        moved, rebuilt_from = [] if loaded.moved_to is None else [loaded.moved_to], None
        if loaded.state is None:
            rebuilt_from = self._rebuild_branch_point(parent_dir, step, str(loaded.problem))
            loaded = load_branch(path, self.model, self.optimizer, self.dist)
        checkpoint = loaded.state
        if checkpoint is None:
            raise ValueError(f"rebuilt branch checkpoint {path} cannot be read: {loaded.problem}")
        if checkpoint["run_key"] != parent or checkpoint["step"] != step:
            raise ValueError(
                f"branch checkpoint {path} holds run {checkpoint['run_key']} at step "
                f"{checkpoint['step']}, not {parent} at step {step}"
            )
        rows = [json.loads(line) for line in (path / BRANCH_METRICS).read_text().splitlines()]
        for row in rows:
            if "loss" in row:
                row["loss_smoothed"] = self.state.smoothed.update(row["loss"])
        checkpoint["smoothed"] = (self.state.smoothed.value, self.state.smoothed.weight)
        self.state.load_state_dict(checkpoint)
        self.state.branched_from = {"parent": parent, "step": step}
        if rebuilt_from is not None:  # the record says so only where it happened
            self.state.branched_from["rebuilt_from_step"] = rebuilt_from
        self.inherited = rows
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out_dir / METRICS_NAME, "")  # rows of an earlier try go
            print(
                f"[qat-sweep] branching {self.cfg.run_key} from {parent} at step "
                f"{step}/{self.setup.total_steps}"
            )
        return moved

    def _rebuild_branch_point(self, parent_dir: Path, step: int, problem: str) -> int | None:
        """Rerun the parent to its branch checkpoint at ``step``, once it has passed that step
        (else this run waits for it); the step the rerun started from, or None when another
        child rebuilt it while this one waited for the lock."""
        parent, path = parent_dir.name, branch_checkpoint_path(parent_dir, step)
        if not parent_passed(parent_dir, step):
            raise ValueError(
                f"branch checkpoint {path} cannot be used ({problem}): parent {parent} has not "
                f"kept step {step}; start this run once it has (launch does)"
            )
        cfg = parent_config(parent_dir, parent, step, self.cfg)
        if cfg is None:
            raise ValueError(
                f"branch checkpoint {path} cannot be used ({problem}) and parent {parent}, "
                f"past step {step}, has no record to rerun its config from yet; start this "
                "run once the parent has ended"
            )
        # One rebuild per branch point: rank 0 holds the lock, the other ranks wait for it.
        lock = rebuild_lock_path(parent_dir, step)
        held = hold(lock, f"the rebuild of {path}", math.inf, self._waiting)
        with held if self.dist.is_main else contextlib.nullcontext():
            barrier(self.dist)
            if not any_rank(not path.is_dir() or checkpoint_problem(path) is not None, self.dist):
                return None  # another child rebuilt it meanwhile
            return self._rerun_parent(cfg, parent_dir, step, problem)

    def _waiting(self, held: LockHeld) -> None:
        print(f"[qat-sweep] waiting: {held}", file=sys.stderr)

    def _rerun_parent(self, cfg: DictConfig, parent_dir: Path, step: int, problem: str) -> int:
        """The parent's config trained in a scratch directory from its latest readable earlier
        checkpoint to ``step``; its branch checkpoint published there; the step it started at."""
        scratch = scratch_dir(parent_dir, step)
        if self.dist.is_main:
            stage(scratch, rebuild_source(parent_dir, step))
        barrier(self.dist)
        rerun = Trainer(cfg, validate_run(cfg), scratch, sweep_dir=self.sweep_dir)
        start = rerun.state.step
        if self.dist.is_main:
            print(
                f"[qat-sweep] rebuilding {parent_dir.name} branch checkpoint at step {step} "
                f"from step {start} ({problem})"
            )
        rerun.keep_branch_point(step)
        if self.dist.is_main:
            publish(scratch, parent_dir, step)
        barrier(self.dist)
        return start

    def _tracker(self) -> Tracker:
        return Tracker(
            self.out_dir,
            enabled=self.dist.is_main,
            wandb_settings=OmegaConf.to_container(
                self.cfg.logger.wandb, resolve=True, enum_to_str=True
            ),
            wandb_init=wandb_init(self.cfg, self.record),
        )

    # ------------------------------------------------------------------------- the loop

    def run(self) -> dict[str, Any]:
        """Train to the last step (resuming where the checkpoint left off); returns the record."""
        try:
            return self._train_to(self.setup.total_steps, then=self.finish)
        finally:
            teardown_distributed()

    def keep_branch_point(self, step: int) -> None:
        """Train to ``step`` and keep the branch checkpoint there, no further (a rerun that
        rebuilds it): no final evaluation, no record, the process group left to the caller."""
        self._train_to(step, then=lambda: self._keep_reached(step))

    def _keep_reached(self, step: int) -> None:
        if self.dist.is_main:  # a rerun that resumed at ``step`` itself trained nothing
            keep_for_branches(self.out_dir, step, metrics_until(self.out_dir, step))
        barrier(self.dist)
        self.tracker.finish({})

    def _train_to(self, last_step: int, then: Callable[[], Result]) -> Result:
        """The loop from the current step to ``last_step``, then ``then()`` (its result)."""
        previous_handlers = install_signal_handlers()
        state = self.state
        state.started = state.window_start = time.perf_counter()
        state.last_save = time.monotonic()
        self.batches = Prefetcher(
            self._batch_for, self.n_micro, state.step, self.setup.total_steps, self.dev
        )
        try:
            self.model.train()
            if 0 < state.step < self.setup.total_steps and state.step % self.setup.eval_every == 0:
                self._log_eval()  # resumed at an eval step: its row came after the save, if at all
            while state.step < last_step:
                self.train_step()
                self._at_boundary()
            return then()
        except BaseException as exc:
            status = {Diverged: "diverged", Preempted: "preempted"}.get(type(exc), "failed")
            self.tracker.finish({"final/status": status}, exit_code=1)
            raise
        finally:
            self.batches.close()
            restore_signal_handlers(previous_handlers)

    def _batch_for(self, at_step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.schedule.batch(
            at_step, self.dist.rank, self.dist.world_size, micro, self.n_micro
        )

    def train_step(self) -> None:
        """One optimizer step; its loss stays on the device until the next boundary."""
        cfg, setup, state = self.cfg, self.setup, self.state
        if state.step == setup.quant_start and state.step > 0:  # QAT after BF16 starts
            start_quantizing(self.model)
        lr = float(cfg.optim.lr) * lr_multiplier(
            state.step, setup.total_steps, setup.warmup_steps, cfg.optim
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.batches.next()
        loss, grad_norm = train_step(
            self.model,
            self.optimizer,
            batch.micro_batches,
            grad_clip=float(cfg.optim.grad_clip),
            autocast=self.autocast,
            wrapped=self.train_model,
        )
        state.step += 1
        self.pending.append((state.step, loss, grad_norm, lr, batch.crc))
        state.window_tokens += self.tokens_per_step

    def _at_boundary(self) -> None:
        """At progress, eval and checkpoint steps (or on a signal): log, save, evaluate."""
        step, setup = self.state.step, self.setup
        at_progress = step % self.progress_every == 0 or step == setup.total_steps
        at_eval = step % setup.eval_every == 0 and step < setup.total_steps
        every_steps = setup.checkpoint_every and step % setup.checkpoint_every == 0
        at_checkpoint = bool(every_steps) and step < setup.total_steps
        at_branch = step in self.branch_steps
        boundary = at_progress or at_eval or at_checkpoint or at_branch
        # Agreeing on a stop or a due save is a collective: with several ranks, only at the
        # boundaries (one process decides every step, at no cost).
        stop = save_due = False
        if boundary or self.dist.world_size == 1:
            stop, save_due = self._stop_or_save_due()
        if not (boundary or stop or save_due):
            return
        rows = self.settle()
        if at_progress:
            self._progress(rows[-1])
        # Logged before a checkpoint covers their steps: a run killed right after the save
        # resumes past them and would never log them again.
        self._log(rows)
        # Save before evaluating: an evaluation must never delay a due checkpoint.
        if stop or save_due or at_checkpoint or at_branch:
            self.save()
        if at_branch and self.dist.is_main:
            keep_for_branches(self.out_dir, step, metrics_until(self.out_dir, step))
            release_held_jobs(branch_release_path(self.out_dir, step))
        if stop:
            barrier(self.dist)  # no rank exits while another still writes
            if self.dist.is_main:
                requeue_slurm_job(stop_signal() or signal.SIGTERM)  # others follow rank 0
            raise Preempted(stop_signal() or signal.SIGTERM)
        if at_eval:
            self._log_eval()

    def _log_eval(self) -> None:
        """An evaluation's own row (step, tokens, val_loss, per-site stats), as the final one."""
        self._log([{k: v for k, v in self.evaluate().items() if k != "_stats"}])

    def _log(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.tracker.log(row)

    def _stop_or_save_due(self) -> tuple[bool, bool]:
        """One collective per step: a signal on any rank, or the wall-clock save is due."""
        every_s = self.save_every_s
        due = every_s > 0 and time.monotonic() - self.state.last_save >= every_s
        return any_ranks((stop_signal() is not None, due), self.dist)

    def settle(self) -> list[dict[str, Any]]:
        """The pending steps' rows: losses averaged over ranks, divergence checked, smoothed."""
        pending, state = self.pending, self.state
        if not pending:
            return []
        losses = all_reduce_mean(torch.stack([p[1] for p in pending]), self.dist).tolist()
        norms = torch.stack([p[2] for p in pending]).tolist()
        rows: list[dict[str, Any]] = []
        max_loss = self.cfg.train.max_loss
        for (at, _, _, lr, crc), loss, norm in zip(pending, losses, norms, strict=True):
            if not math.isfinite(loss) or loss > float(max_loss):
                pending.clear()
                self._log(rows)
                raise Diverged(f"training loss {loss} at step {at} (limit {max_loss})")
            rows.append(
                {
                    "step": at,
                    "tokens": at * self.tokens_per_step,
                    "loss": loss,
                    "loss_smoothed": state.smoothed.update(loss),
                    "lr": lr,
                    "grad_norm": norm,
                    "batch_crc": crc,
                }
            )
            state.last_loss = loss
        pending.clear()
        return rows

    def _progress(self, row: dict[str, Any]) -> None:
        state, setup = self.state, self.setup
        tokens_per_s = state.end_window()
        row["tokens_per_s"] = tokens_per_s
        row["mfu"] = mfu(tokens_per_s, self.flops_token, self.peak, self.dist.world_size)
        if self.dist.is_main:
            left = (setup.total_steps - state.step) * self.tokens_per_step
            eta = left / max(tokens_per_s, 1e-9)
            print(
                f"[{self.cfg.run_key}] step {state.step}/{setup.total_steps} "
                f"tokens {state.step * self.tokens_per_step:.3g}/{setup.tokens:.3g} "
                f"loss {state.last_loss:.4f} (smoothed {row['loss_smoothed']:.4f}) "
                f"{tokens_per_s:,.0f} tok/s ETA {eta:,.0f}s",
                flush=True,
            )

    def save(self) -> None:
        """Checkpoint model, optimizer and the train state at the current step."""
        if self.state.step == 0:
            return  # nothing trained yet: a fresh start is the same run
        keep = int(self.cfg.checkpoint.get("keep", 2))
        self.tracker.sync()  # the rows this checkpoint covers outlive a node loss with it
        save_checkpoint(
            self.out_dir,
            self.state.step,
            self.model,
            self.optimizer,
            self.state.state_dict(),
            self.dist,
            keep=keep,
        )
        self.state.last_save = time.monotonic()

    def evaluate(self) -> dict[str, Any]:
        """The validation loss and the quantizer statistics per site, as a metrics row."""
        model, dev, execution = self.model, self.dev, self.execution
        with torch.compiler.set_stance("force_eager"):  # no recompiles for eval shapes; hooks
            val = mean_loss(model, self.eval_batches, dev, self.autocast, execution.eval_micro)
            fsdp = execution.parallelism == "fsdp"
            with unsharded(model) if fsdp else contextlib.nullcontext():
                stats = site_stats(model, self.eval_batches[0][0][:4].to(dev))
        at_step = self.state.step
        row = {"step": at_step, "tokens": at_step * self.tokens_per_step, "val_loss": val}
        for site, values in stats["sites"].items():
            for name in ("kurtosis", "act_nmse", "weight_nmse"):
                row[f"quant/{site}/{name}"] = values[name]
            for name in ("kurtosis_rotated", "act_nmse_unrotated", "weight_nmse_unrotated"):
                if values[name] is not None:  # a rotated run's before/after
                    row[f"quant/{site}/{name}"] = values[name]
        return row | {"_stats": stats}

    def finish(self) -> dict[str, Any]:
        """The final evaluation and the completed record, written atomically; checkpoints go."""
        final = self.evaluate()
        stats = final.pop("_stats")
        self.tracker.log(final)
        record = self.record
        record.update(
            status="completed",
            loss=self.state.smoothed.get(),
            val_loss=final["val_loss"],
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        state, world = self.state, self.dist.world_size
        metrics = run_metrics(
            self.setup, state, self.execution, world,
            mfu=mfu(state.tokens_per_s, self.flops_token, self.peak, world),
            flops_per_token=self.flops_token, compiled=self.compiled, epochs=self.epochs,
            corrupt_checkpoints=self.moved_aside, device=self.dev, quant=stats,
        )  # fmt: skip
        # A try resumed at the last step trains none: its per-try figures (last loss, tokens/s)
        # are NaN, which the record's JSON refuses. They become null; the run completes.
        record["metrics"] = json_safe({**metrics, "branched_from": state.branched_from})
        record["execution"] = execution_record(
            self.execution, self.device, world, self.autocast, self.compiled
        )
        if self.dist.is_main:
            self.tracker.sync()
            write_json_atomic(self.out_dir / RECORD_NAME, record)
            if not self.cfg.checkpoint.keep_on_success:
                remove_checkpoint(self.out_dir)
        self.tracker.finish_run(record)  # after the record: the later twin of a pair sees both
        return record


def train_from_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Compose the run from `key=value` overrides (as `qat-sweep plan` lists them) and train it."""
    return train(compose_run(list(overrides)))


def exit_code(record: dict[str, Any]) -> int:
    return {"completed": 0, "diverged": EXIT_DIVERGED}.get(record["status"], EXIT_FAILED)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    """The Hydra app; works with `-m` and any Hydra launcher (basic, submitit_local/slurm)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        record = train(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except LockHeld as held:
        print(f"[qat-sweep] not started: {held}", file=sys.stderr)
        sys.exit(EXIT_LOCKED)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"[qat-sweep] {record['run_key']}: {record['status']} loss={record['loss']} "
            f"val_loss={record['val_loss']} -> {run_dir(cfg) / RECORD_NAME}"
        )
    code = exit_code(record)
    if code:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise RuntimeError(f"run {record['run_key']} {record['status']}: {record['error']}")
        sys.exit(code)


if __name__ == "__main__":
    main()
