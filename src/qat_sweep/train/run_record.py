"""A run's record: the identity fields before training (tolerant of a config that fails to
build), and the metrics of a completed run."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qat_sweep.config.compose import identity_fields, twin_key
from qat_sweep.delta import EXECUTION_FIELDS
from qat_sweep.record import SCHEMA, software_versions
from qat_sweep.train.setup import Execution, RunSetup
from qat_sweep.train.state import TrainState
from qat_sweep.train.tracking import wandb_config, wandb_id


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


def base_record(cfg: DictConfig, setup: RunSetup | None) -> dict[str, Any]:
    """The record's identity fields; every derived field tolerates a config that fails to build."""
    # Plain words for the schema's Enum keys (train.device...): the record is JSON and YAML.
    config = _or_none(lambda: OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return {
        "schema": SCHEMA,
        "run_key": str(cfg.run_key),
        "twin_key": _or_none(lambda: twin_key(cfg)),
        "sweep": str(cfg.sweep_name),
        "subgrid": cfg.get("subgrid"),
        "holdout": bool(cfg.get("holdout")),
        "status": "failed",
        "error": None,
        **identity_fields(cfg, strict=False),
        "n_params_total": setup.model_cfg.n_params_total(setup.vocab_size) if setup else None,
        "loss": None,
        "val_loss": None,
        "metrics": {},
        "config": config or OmegaConf.to_container(cfg, resolve=False, enum_to_str=True),
        "versions": software_versions(),
        "slurm": _slurm_info(),
        "wandb": None,
    }


def wandb_init(cfg: DictConfig, record: dict[str, Any]) -> dict[str, Any]:
    """wandb.init's arguments for the run: one id per run (resumes continue it), grouped by sweep."""
    return {
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
    }


def run_metrics(
    setup: RunSetup, state: TrainState, execution: Execution, world_size: int, **measured: Any
) -> dict[str, Any]:
    """A completed record's `metrics`: throughput, schedule and how the run executed, plus
    what only the trainer knows (``measured``: mfu, quant statistics, compiled...)."""
    elapsed = state.wall_s()
    tokens_trained = setup.total_steps * setup.global_batch * setup.seq_len
    return {
        "tokens_per_s": tokens_trained / max(elapsed, 1e-9),
        "tokens_per_s_last": state.tokens_per_s,  # this try's last window (NaN: none trained)
        "train_loss_last": state.last_loss,
        "steps": setup.total_steps,
        "tokens_trained": tokens_trained,
        "warmup_steps": setup.warmup_steps,
        "loss_smoothing": {"kind": "bias-corrected EMA", "window_steps": setup.smoothing_window},
        "world_size": world_size,
        "parallelism": execution.parallelism,
        "micro_batch_seqs": execution.micro,
        "activation_checkpointing": execution.activation_checkpointing,
        "wall_s": elapsed,
        **measured,
    }


def execution_record(
    execution: Execution, device_type: str, world_size: int, autocast: bool, compiled: bool
) -> dict[str, Any]:
    """The record's `execution`: how the run computed, which its BF16 twin must share
    (delta.EXECUTION_FIELDS; the fit leaves a pair that differs out)."""
    fsdp = execution.parallelism == "fsdp"
    settings = {
        "device_type": device_type,
        "world_size": world_size,
        "parallelism": execution.parallelism,
        "micro_batch_seqs": execution.micro,
        "compute_dtype": "bf16" if autocast else "fp32",
        "gather_dtype": "fp32" if fsdp else None,  # distributed.wrap_model's policy
        "compiled": compiled,
        "autocast": autocast,
    }
    assert tuple(settings) == EXECUTION_FIELDS
    return settings
