"""One QAT or BF16 training run: `qat-sweep train key=value ...` / `python -m qat_sweep.train`.

One resolved config in, one run directory out (`<paths.runs>/<sweep>/<run_key>/`): metrics.jsonl,
periodic atomic checkpoints, and at the end an atomically written `result.json`. Running it
again resumes from the checkpoint, or returns at once when the record says `completed`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from qat_sweep.checkpoint import (
    load_latest,
    remove_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from qat_sweep.config import compose_run, parse_tokens, run_dir, twin_key
from qat_sweep.data import BatchSchedule, TokenData, check_token_budget, open_data, val_batches
from qat_sweep.distributed import (
    DistInfo,
    all_reduce_mean,
    any_ranks,
    apply_activation_checkpointing,
    barrier,
    resolve_parallelism,
    setup_distributed,
    teardown_distributed,
    unsharded,
    wrap_model,
)
from qat_sweep.flops import flops_per_token, mfu, peak_flops
from qat_sweep.grid import config_problems
from qat_sweep.instrument import site_stats
from qat_sweep.locks import LockHeld, run_lock
from qat_sweep.model import Transformer, build_model, compile_blocks, compile_enabled
from qat_sweep.model import validate as validate_model
from qat_sweep.preemption import (
    Preempted,
    install_signal_handlers,
    requeue_slurm_job,
    restore_signal_handlers,
    stop_signal,
)
from qat_sweep.prefetch import Prefetcher
from qat_sweep.presets import CONF_DIR, ModelConfig, model_config_from
from qat_sweep.recipe import SmoothedLoss, lr_multiplier, make_optimizer, train_step
from qat_sweep.record import (
    RECORD_NAME,
    SCHEMA,
    read_record,
    software_versions,
    write_json_atomic,
)
from qat_sweep.schemes import QuantConfig, quant_config_from
from qat_sweep.tracking import Tracker, truncate_metrics, wandb_config, wandb_id

__all__ = [
    "RECORD_NAME",
    "Preempted",
    "read_record",
    "train",
    "train_from_overrides",
    "validate_run",
]

EXIT_FAILED, EXIT_DIVERGED = 1, 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another trainer holds the run directory


class Diverged(RuntimeError):
    """The loss became NaN/Inf or exceeded train.max_loss."""


@dataclass(frozen=True)
class RunSetup:
    """Everything validated before the first step: shapes, data, step counts."""

    model_cfg: ModelConfig
    quant: QuantConfig
    data: TokenData
    vocab_size: int
    tokens: int
    seq_len: int
    global_batch: int
    total_steps: int
    warmup_steps: int
    eval_every: int
    checkpoint_every: int
    smoothing_window: int


# ----------------------------------------------------------------------------- validation


def _ensure_data(cfg: DictConfig) -> TokenData:
    return open_data(cfg.data)  # builds the demo corpus if needed; checks files and token ids


def validate_run(cfg: DictConfig) -> RunSetup:
    """Every check that can fail before a training step: raises ValueError naming the problem."""
    problems = config_problems(OmegaConf.to_container(cfg, resolve=True))  # as plan/launch do
    if problems:
        raise ValueError("; ".join(problems))
    model_cfg = model_config_from(cfg.model)
    quant = quant_config_from(cfg.quant)
    try:
        data = _ensure_data(cfg)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from exc
    vocab = model_cfg.vocab_size or data.vocab_size
    if vocab < data.vocab_size:
        raise ValueError(
            f"model.vocab_size={vocab} is smaller than the data's vocabulary "
            f"({data.vocab_size} tokens in {data.source}); set model.vocab_size=null to take it "
            f"from the data"
        )
    validate_model(model_cfg, quant, vocab)  # every G against every layer, before any tensor
    tokens = parse_tokens(cfg.tokens)
    seq_len = int(cfg.train.seq_len)
    global_batch = int(cfg.optim.batch_seqs)
    tokens_per_step = global_batch * seq_len
    if tokens < tokens_per_step:
        raise ValueError(
            f"tokens={tokens} is smaller than one global batch ({global_batch} sequences x "
            f"{seq_len} tokens = {tokens_per_step}); raise tokens or lower optim.batch_seqs"
        )
    total_steps = tokens // tokens_per_step
    check_token_budget(data, seq_len, total_steps * global_batch, cfg.data.get("max_epochs"))
    warmup = min(
        int(cfg.optim.warmup_steps),
        max(1, int(cfg.optim.warmup_max_fraction * total_steps)),
    )
    smoothing = cfg.train.loss_smoothing
    window = int(min(smoothing.max_steps, max(1, round(smoothing.fraction * total_steps))))
    every = lambda value: int(value) or max(1, total_steps // 10)  # noqa: E731
    if cfg.optim.schedule not in ("cosine", "wsd"):
        raise ValueError(f"optim.schedule={cfg.optim.schedule!r}; allowed: cosine, wsd")
    if float(cfg.checkpoint.every_minutes) < 0 or int(cfg.checkpoint.every_steps) < 0:
        raise ValueError(
            f"checkpoint.every_minutes={cfg.checkpoint.every_minutes} and checkpoint.every_steps="
            f"{cfg.checkpoint.every_steps}: both must be >= 0 (0 = off)"
        )
    return RunSetup(
        model_cfg=model_cfg,
        quant=quant,
        data=data,
        vocab_size=vocab,
        tokens=tokens,
        seq_len=seq_len,
        global_batch=global_batch,
        total_steps=total_steps,
        warmup_steps=warmup,
        eval_every=every(cfg.eval.every_steps),
        checkpoint_every=int(cfg.checkpoint.every_steps),
        smoothing_window=window,
    )


# ----------------------------------------------------------------------------- the run


def _device(cfg: DictConfig) -> str:
    wanted = str(cfg.train.device)
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted not in ("cpu", "cuda"):
        raise ValueError(f"train.device={wanted!r}; allowed: auto, cpu, cuda")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    return wanted


def _slurm_info() -> dict[str, Any] | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    keys = (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_JOB_NODELIST",
        "SLURM_RESTART_COUNT",
        "SLURM_NTASKS",
    )
    return {key.removeprefix("SLURM_").lower(): os.environ.get(key) for key in keys}


def _or_none(compute: Any) -> Any:
    try:
        return compute()
    except Exception:  # a broken config must still yield a failure record
        return None


def _base_record(cfg: DictConfig, setup: RunSetup | None) -> dict[str, Any]:
    """The record's identity fields; every derived field tolerates a config that fails to build."""
    quant = cfg.quant
    model = _or_none(lambda: model_config_from(cfg.model))
    group = quant.get("group_size") if quant.get("scheme") != "bf16" else None
    config = _or_none(lambda: OmegaConf.to_container(cfg, resolve=True))
    return {
        "schema": SCHEMA,
        "run_key": str(cfg.run_key),
        "twin_key": _or_none(lambda: twin_key(cfg)),
        "sweep": str(cfg.sweep_name),
        "subgrid": cfg.get("subgrid"),
        "holdout": bool(cfg.get("holdout")),
        "status": "failed",
        "error": None,
        "model": model.name if model else str(cfg.model.get("name")),
        "n_params": model.n_params if model else None,
        "n_params_total": model.n_params_total(setup.vocab_size) if model and setup else None,
        "hidden_size": model.hidden_size if model else None,
        "tokens": parse_tokens(cfg.tokens),
        "scheme": str(quant.get("scheme")),
        "format": str(quant.get("format")) if quant.get("scheme") != "bf16" else "bf16",
        "group_size": group if group in (None, "channel") else _or_none(lambda: int(group)),
        "lr": _or_none(lambda: float(cfg.optim.lr)),
        "seed": int(cfg.seed),
        "loss": None,
        "val_loss": None,
        "metrics": {},
        "config": config or OmegaConf.to_container(cfg, resolve=False),
        "versions": software_versions(),
        "slurm": _slurm_info(),
        "wandb": None,
    }


@torch.no_grad()
def evaluate(
    model: Transformer, batches: list, device: str, autocast: bool, micro: int | None = None
) -> float:
    """Mean loss over the batches, each run in equal chunks of ``micro`` sequences (same mean)."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        for xs, ys in zip(x.split(micro or len(x)), y.split(micro or len(y)), strict=True):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                losses.append(float(model(xs.to(device), ys.to(device))))
    model.train(was_training)
    return sum(losses) / len(losses)


@dataclass(frozen=True)
class Execution:
    """How this process runs the step: parallelism and micro-batches (not the run identity)."""

    parallelism: str
    micro: int
    eval_micro: int
    activation_checkpointing: bool


def _execution(cfg: DictConfig, setup: RunSetup, info: DistInfo, device: str) -> Execution:
    """The configured parallelism and micro-batches; on CUDA, unset ones sized to the GPU."""
    parallelism = resolve_parallelism(str(cfg.train.get("parallelism") or "auto"), info)
    if setup.global_batch % info.world_size:
        raise ValueError(
            f"global batch {setup.global_batch} does not split into {info.world_size} ranks"
        )
    per_rank = setup.global_batch // info.world_size
    eval_seqs = int(cfg.eval.batch_seqs)
    micro, eval_micro = cfg.train.micro_batch_seqs, cfg.eval.get("micro_batch_seqs")
    checkpointing = bool(cfg.train.get("activation_checkpointing"))
    wanted = str(cfg.train.get("parallelism") or "auto")
    if device == "cuda" and (micro is None or (wanted == "auto" and info.world_size > 1)):
        from qat_sweep.sizing import fit_on_device

        fitted = fit_on_device(
            setup.model_cfg, setup.quant, vocab_size=setup.vocab_size, seq_len=setup.seq_len,
            per_rank=per_rank, eval_batch_seqs=eval_seqs, world_size=info.world_size,
            parallelism=wanted if info.world_size > 1 else "single",
            activation_checkpointing=checkpointing,
            device_bytes=torch.cuda.get_device_properties(info.device).total_memory,
        )  # fmt: skip
        parallelism = fitted[0] if wanted == "auto" else parallelism
        micro = fitted[1] if micro is None else micro
        eval_micro = fitted[2] if eval_micro is None else eval_micro
    micro, eval_micro = int(micro or per_rank), int(eval_micro or eval_seqs)
    if per_rank % micro or eval_seqs % eval_micro:
        raise ValueError(
            f"train.micro_batch_seqs={micro} must divide the per-rank batch of {per_rank} "
            f"sequences and eval.micro_batch_seqs={eval_micro} the eval batch of {eval_seqs}"
        )
    return Execution(parallelism, micro, eval_micro, checkpointing)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) one run; returns its record. Never raises for a failed run."""
    out_dir = run_dir(cfg)
    existing = read_record(out_dir)
    if existing is not None and existing["status"] == "completed":
        return existing
    # One trainer per run directory: a second one raises LockHeld naming the holder, before it
    # touches checkpoint or metrics.
    with run_lock(out_dir):
        existing = read_record(out_dir)  # the previous holder may have just finished it
        if existing is not None and existing["status"] == "completed":
            return existing
        setup: RunSetup | None = None
        try:
            setup = validate_run(cfg)
            return _train(cfg, setup, out_dir)
        except Exception as exc:  # Preempted is a SystemExit: it passes through to SLURM
            record = _base_record(cfg, setup)
            record["status"] = "diverged" if isinstance(exc, Diverged) else "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["metrics"]["traceback"] = traceback.format_exc(limit=20)
            if int(os.environ.get("RANK", "0")) == 0:
                write_json_atomic(out_dir / RECORD_NAME, record)
            print(
                f"[qat-sweep] run {cfg.run_key} {record['status']}: {record['error']}",
                file=sys.stderr,
            )
            return record


def _train(cfg: DictConfig, setup: RunSetup, out_dir: Path) -> dict[str, Any]:
    device = _device(cfg)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    dist_info = setup_distributed(device)
    dev = dist_info.device
    autocast = device == "cuda" and str(cfg.train.autocast_bf16) in ("auto", "true", "True")
    execution = _execution(cfg, setup, dist_info, device)
    n_micro = setup.global_batch // dist_info.world_size // execution.micro

    torch.manual_seed(int(cfg.seed))  # same init for BF16 and QAT twins
    model = build_model(setup.model_cfg, setup.quant, vocab_size=setup.vocab_size).to(dev)
    if execution.activation_checkpointing:
        apply_activation_checkpointing(model)
    compiled = compile_enabled(cfg.train.compile, device)
    if compiled:
        compile_blocks(model)  # per block, after activation checkpointing, before wrapping
    train_model = wrap_model(model, execution.parallelism, dist_info)  # FSDP shards in place
    optimizer = make_optimizer(model, cfg.optim)
    schedule = BatchSchedule(setup.data.train, setup.seq_len, setup.global_batch, int(cfg.seed))
    eval_batches = val_batches(
        setup.data.val, setup.seq_len, int(cfg.eval.batch_seqs), int(cfg.eval.batches)
    )
    epochs = schedule.epochs_for(setup.total_steps)
    if epochs > 1 and dist_info.is_main:
        print(
            f"[qat-sweep] warning: {setup.tokens:,} tokens are {epochs:.2f} passes over the "
            f"{setup.data.source} training split: data repeats",
            file=sys.stderr,
        )
    smoothed = SmoothedLoss(setup.smoothing_window)
    step, wall_before = 0, 0.0

    checkpoint, moved_aside = load_latest(out_dir, model, optimizer, dist_info)
    if checkpoint is not None:
        if checkpoint["run_key"] != cfg.run_key:
            raise ValueError(f"checkpoint in {out_dir} belongs to run {checkpoint['run_key']}")
        smoothed = SmoothedLoss(setup.smoothing_window, *checkpoint["smoothed"])
        step, wall_before = checkpoint["step"], checkpoint["wall_s"]
        set_rng_state(checkpoint["rng"])
        if dist_info.is_main:
            print(f"[qat-sweep] resuming {cfg.run_key} at step {step}/{setup.total_steps}")
    if dist_info.is_main:
        truncate_metrics(out_dir, step)  # rows after the checkpoint (or of a failed try) go

    record = _base_record(cfg, setup)
    tracker = Tracker(
        out_dir,
        enabled=dist_info.is_main,
        wandb_settings=OmegaConf.to_container(cfg.logger.wandb, resolve=True),
        wandb_init={
            "id": wandb_id(str(cfg.sweep_name), str(cfg.run_key)),
            "name": str(cfg.run_key),
            "group": str(cfg.sweep_name),
            "job_type": str(cfg.quant.scheme),
            "tags": [
                f"N={record['model']}",
                f"D={record['tokens']:.3g}",
                f"G={record['group_size']}",
                f"format={record['format']}",
                *cfg.logger.wandb.tags,
            ],
            "config": wandb_config(record),
        },
    )
    record["wandb"] = tracker.wandb_info
    flops_token = flops_per_token(setup.model_cfg, setup.seq_len, setup.vocab_size)
    peak = peak_flops(torch.device(dev)) if device == "cuda" else None
    tokens_per_step = setup.global_batch * setup.seq_len

    previous_handlers = install_signal_handlers()
    t_start, t_window, window_tokens = time.perf_counter(), time.perf_counter(), 0
    tokens_per_s, last_loss = float("nan"), float("nan")
    progress_every = int(cfg.logger.progress_every_steps)

    every_s = float(cfg.checkpoint.every_minutes) * 60
    last_save = [time.monotonic()]

    def save(at_step: int) -> None:
        if at_step == 0:
            return  # nothing trained yet: a fresh start is the same run
        state = {
            "run_key": str(cfg.run_key),
            "step": at_step,
            "smoothed": (smoothed.value, smoothed.weight),
            "rng": rng_state(),
            "wall_s": wall_before + time.perf_counter() - t_start,
        }
        keep = int(cfg.checkpoint.get("keep", 2))
        save_checkpoint(out_dir, at_step, model, optimizer, state, dist_info, keep=keep)
        last_save[0] = time.monotonic()

    def stop_or_save_due() -> tuple[bool, bool]:
        """One collective per step: a signal on any rank, or the wall-clock save is due."""
        due = every_s > 0 and time.monotonic() - last_save[0] >= every_s
        return any_ranks((stop_signal() is not None, due), dist_info)

    def eval_row(at_step: int) -> dict[str, Any]:
        with torch.compiler.set_stance("force_eager"):  # no recompiles for eval shapes; hooks
            val = evaluate(model, eval_batches, dev, autocast, execution.eval_micro)
            fsdp = execution.parallelism == "fsdp"
            with unsharded(model) if fsdp else contextlib.nullcontext():
                stats = site_stats(model, eval_batches[0][0][:4].to(dev))
        row = {"step": at_step, "tokens": at_step * tokens_per_step, "val_loss": val}
        for site, values in stats["sites"].items():
            for name in ("kurtosis", "act_nmse", "weight_nmse"):
                row[f"quant/{site}/{name}"] = values[name]
        return row | {"_stats": stats}

    # Steps whose loss and gradient norm are still on the device: they are read in one host
    # sync at the progress, eval and checkpoint steps (and the last), not every step.
    pending: list[tuple[int, torch.Tensor, torch.Tensor, float, int]] = []

    def settle() -> list[dict[str, Any]]:
        """The pending steps' rows: losses averaged over ranks, divergence checked, smoothed."""
        nonlocal last_loss
        if not pending:
            return []
        losses = all_reduce_mean(torch.stack([p[1] for p in pending]), dist_info).tolist()
        norms = torch.stack([p[2] for p in pending]).tolist()
        rows = []
        for (at, _, _, lr, crc), loss, norm in zip(pending, losses, norms, strict=True):
            if not math.isfinite(loss) or loss > float(cfg.train.max_loss):
                pending.clear()
                for row in rows:
                    tracker.log(row)
                raise Diverged(f"training loss {loss} at step {at} (limit {cfg.train.max_loss})")
            rows.append(
                {
                    "step": at,
                    "tokens": at * tokens_per_step,
                    "loss": loss,
                    "loss_smoothed": smoothed.update(loss),
                    "lr": lr,
                    "grad_norm": norm,
                    "batch_crc": crc,
                }
            )
            last_loss = loss
        pending.clear()
        return rows

    def batch_for(at_step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return schedule.batch(at_step, dist_info.rank, dist_info.world_size, micro, n_micro)

    batches = Prefetcher(batch_for, n_micro, step, setup.total_steps, dev)
    try:
        model.train()
        while step < setup.total_steps:
            lr = float(cfg.optim.lr) * lr_multiplier(
                step, setup.total_steps, setup.warmup_steps, cfg.optim
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batches.next()
            loss, grad_norm = train_step(
                model,
                optimizer,
                batch.micro_batches,
                grad_clip=float(cfg.optim.grad_clip),
                autocast=autocast,
                wrapped=train_model,
            )
            step += 1
            pending.append((step, loss, grad_norm, lr, batch.crc))
            window_tokens += tokens_per_step
            at_progress = step % progress_every == 0 or step == setup.total_steps
            at_eval = step % setup.eval_every == 0 and step < setup.total_steps
            every_steps = setup.checkpoint_every and step % setup.checkpoint_every == 0
            at_checkpoint = bool(every_steps) and step < setup.total_steps
            boundary = at_progress or at_eval or at_checkpoint
            # Agreeing on a stop or a due save is a collective: with several ranks, only at the
            # boundaries (one process decides every step, at no cost).
            stop = save_due = False
            if boundary or dist_info.world_size == 1:
                stop, save_due = stop_or_save_due()
            if not (boundary or stop or save_due):
                continue
            rows = settle()
            row = rows[-1]
            if at_progress:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - t_window, 1e-9)
                t_window, window_tokens = now, 0
                row["tokens_per_s"] = tokens_per_s
                row["mfu"] = mfu(tokens_per_s, flops_token, peak, dist_info.world_size)
                if dist_info.is_main:
                    eta = (setup.total_steps - step) * tokens_per_step / max(tokens_per_s, 1e-9)
                    print(
                        f"[{cfg.run_key}] step {step}/{setup.total_steps} "
                        f"tokens {step * tokens_per_step:.3g}/{setup.tokens:.3g} loss {last_loss:.4f} "
                        f"(smoothed {row['loss_smoothed']:.4f}) {tokens_per_s:,.0f} tok/s "
                        f"ETA {eta:,.0f}s",
                        flush=True,
                    )
            # Save before evaluating: an evaluation must never delay a due checkpoint.
            if stop or save_due or at_checkpoint:
                save(step)
            if stop:
                for settled in rows:
                    tracker.log(settled)
                barrier(dist_info)  # no rank exits while another still writes
                if dist_info.is_main:
                    requeue_slurm_job(stop_signal() or signal.SIGTERM)  # others follow rank 0
                raise Preempted(stop_signal() or signal.SIGTERM)
            if at_eval:
                row.update({k: v for k, v in eval_row(step).items() if k != "_stats"})
            for settled in rows:
                tracker.log(settled)

        final = eval_row(step)
        stats = final.pop("_stats")
        tracker.log(final)
        elapsed = wall_before + time.perf_counter() - t_start
        record.update(
            status="completed",
            loss=smoothed.get(),
            val_loss=final["val_loss"],
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        record["metrics"] = {
            "tokens_per_s": setup.total_steps * tokens_per_step / max(elapsed, 1e-9),
            "tokens_per_s_last": tokens_per_s,
            "mfu": mfu(tokens_per_s, flops_token, peak, dist_info.world_size),
            "flops_per_token": flops_token,
            "compiled": compiled,
            "train_loss_last": last_loss,
            "steps": setup.total_steps,
            "tokens_trained": setup.total_steps * tokens_per_step,
            "warmup_steps": setup.warmup_steps,
            "epochs": epochs,
            "loss_smoothing": {
                "kind": "bias-corrected EMA",
                "window_steps": setup.smoothing_window,
            },
            "world_size": dist_info.world_size,
            "parallelism": execution.parallelism,
            "micro_batch_seqs": execution.micro,
            "activation_checkpointing": execution.activation_checkpointing,
            "corrupt_checkpoints": moved_aside,
            "wall_s": elapsed,
            "device": dev,
            "quant": stats,
        }
        if dist_info.is_main:
            write_json_atomic(out_dir / RECORD_NAME, record)
            if not cfg.checkpoint.keep_on_success:
                remove_checkpoint(out_dir)
        tracker.finish_run(record)  # after the record: the later twin of a pair sees both
        return record
    except BaseException as exc:
        status = {Diverged: "diverged", Preempted: "preempted"}.get(type(exc), "failed")
        tracker.finish({"final/status": status}, exit_code=1)
        raise
    finally:
        batches.close()
        restore_signal_handlers(previous_handlers)
        teardown_distributed()


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
