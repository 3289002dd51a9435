"""What a run needs settled before its first step: checked config, data, shapes, execution.

`validate_run` raises ValueError naming the problem, so a bad run fails before any tensor is
built; `resolve_execution` sizes the parallelism and micro-batches for this process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from qat_sweep.config.checks import config_problems
from qat_sweep.config.compose import parse_tokens
from qat_sweep.config.steps import run_steps
from qat_sweep.data.batches import TokenData, check_token_budget, open_data
from qat_sweep.data.prepare.corpus import build_demo_corpus
from qat_sweep.data.tokenfiles import needs_build
from qat_sweep.model.precision import QuantConfig, quant_config_from
from qat_sweep.model.presets import ModelConfig, model_config_from
from qat_sweep.model.transformer import validate as validate_model
from qat_sweep.train.distributed import DistInfo, resolve_parallelism


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
    decay_start: int | None  # WSD only
    quant_start: int  # first quantized step (0: QAT from the start)
    eval_every: int
    checkpoint_every: int
    smoothing_window: int


# ----------------------------------------------------------------------------- validation


def _ensure_data(cfg: DictConfig) -> TokenData:
    """Build the demo corpus if the config asks for it and it is missing, then open and check."""
    if needs_build(cfg.data):
        # Locks, so runs started side by side build it once.
        build_demo_corpus(str(cfg.data.dir))
    return open_data(cfg.data)


def validate_run(cfg: DictConfig) -> RunSetup:
    """Every check that can fail before a training step: raises ValueError naming the problem.

    The config's own checks are plan's (`config_problems`, the schema's and those across keys);
    the ones here need the data or the model built.
    """
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
    steps = run_steps(cfg)  # total >= 1: config_problems checked it
    total_steps = steps.total
    check_token_budget(data, seq_len, total_steps * global_batch, cfg.data.get("max_epochs"))
    smoothing = cfg.train.loss_smoothing
    window = int(min(smoothing.max_steps, max(1, round(smoothing.fraction * total_steps))))
    every = lambda value: int(value) or max(1, total_steps // 10)  # noqa: E731
    return RunSetup(
        model_cfg=model_cfg,
        quant=quant,
        data=data,
        vocab_size=vocab,
        tokens=tokens,
        seq_len=seq_len,
        global_batch=global_batch,
        total_steps=total_steps,
        warmup_steps=steps.warmup,
        decay_start=steps.decay_start,
        quant_start=steps.quant_start,
        eval_every=every(cfg.eval.every_steps),
        checkpoint_every=int(cfg.checkpoint.every_steps),
        smoothing_window=window,
    )


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Execution:
    """How this process runs the step: parallelism and micro-batches (not the run identity)."""

    parallelism: str
    micro: int
    eval_micro: int
    activation_checkpointing: bool


def resolve_execution(cfg: DictConfig, setup: RunSetup, info: DistInfo, device: str) -> Execution:
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
        from qat_sweep.estimates.device_fit import fit_on_device

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
