"""Step time of each precision scheme relative to BF16, measured side by side in one process.

What is timed is the trainer's own step: the same model build (padded vocabulary), the same
per-block compilation (``compile=auto`` as in ``train``), the same AdamW (fused on CUDA), the
same micro-batched ``recipe.train_step`` and batches arriving through the same prefetcher
(synthetic tokens, stateless in (seed, step)); with one device the trainer wraps nothing either.
Schemes are interleaved within every repetition (in a rotating order) so clock drift and
thermal effects hit all of them equally; warm-up steps (compilation) are excluded and medians
reported. FLOPs and MFU come from ``qat_sweep.estimates.flops``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qat_sweep.common import progress
from qat_sweep.config.compose import compose_run
from qat_sweep.data.prefetch import Prefetcher
from qat_sweep.estimates.flops import flops_per_token, mfu, peak_flops
from qat_sweep.model.precision import BLOCK_FORMATS, QuantConfig
from qat_sweep.model.presets import ModelConfig
from qat_sweep.model.transformer import build_model, compile_blocks
from qat_sweep.train.recipe import make_optimizer, train_step


@dataclass(frozen=True)
class BenchSettings:
    model: ModelConfig
    batch: int
    micro_batch: int
    seq_len: int
    steps: int
    warmup: int
    schemes: tuple[str, ...]
    formats: tuple[str, ...]
    group_sizes: tuple[int | str, ...]  # for the per-group formats; a block format uses its block
    act_quantizer: str
    rotations: tuple[str, ...]
    vocab_size: int
    compile: tuple[bool, ...]  # one entry, or (True, False) for compile=both
    device: torch.device
    seed: int
    json: str


@dataclass(frozen=True)
class Variant:
    """One timed configuration: scheme, format, group size (None for BF16 and a block format),
    rotation and compile setting."""

    scheme: str
    format: str
    group_size: int | str | None
    rotation: str
    compiled: bool


@dataclass
class SchemeStep:
    """One variant's model, optimizer and batch stream, stepped exactly as the trainer does."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: Prefetcher
    autocast: bool
    grad_clip: float

    def __call__(self) -> None:
        batch = self.batches.next()
        train_step(
            self.model,
            self.optimizer,
            batch.micro_batches,
            grad_clip=self.grad_clip,
            autocast=self.autocast,
        )

    def state_bytes(self) -> int:
        """Parameters plus optimizer state: what stays allocated between steps."""
        tensors = list(self.model.parameters())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


def _quant(settings: BenchSettings, variant: Variant) -> QuantConfig | None:
    if variant.scheme == "bf16":
        return None
    return QuantConfig(
        variant.scheme,
        variant.format,
        variant.group_size,
        settings.act_quantizer,
        rotation=variant.rotation,
    )


def variants(settings: BenchSettings) -> list[Variant]:
    """BF16 once per compile setting, then every scheme x format x G x rotation."""
    out = []
    for compiled in settings.compile:
        out.append(Variant("bf16", "bf16", None, "none", compiled))
        for scheme in settings.schemes:
            if scheme == "bf16":
                continue
            for fmt in settings.formats:
                groups = (None,) if fmt in BLOCK_FORMATS else settings.group_sizes
                out += [
                    Variant(scheme, fmt, group, rotation, compiled)
                    for group in groups
                    for rotation in settings.rotations
                ]
    return out


def _make_step(settings: BenchSettings, variant: Variant, n_steps: int) -> SchemeStep:
    """Builds one variant's model and optimizer as `train` does, fed by the trainer's prefetcher."""
    quant = _quant(settings, variant)
    optim = compose_run([f"model={settings.model.name}", "logger=none"]).optim
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, quant, settings.vocab_size).to(settings.device)
    if variant.compiled:
        compile_blocks(model)
    model.train()
    optimizer = make_optimizer(model, optim)
    n_micro = settings.batch // settings.micro_batch
    shape = (settings.micro_batch, settings.seq_len + 1)

    def batch_for(step: int, micro: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(
            settings.seed * 1_000_003 + step * n_micro + micro
        )
        tokens = torch.randint(0, settings.vocab_size, shape, generator=generator)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    return SchemeStep(
        model=model,
        optimizer=optimizer,
        batches=Prefetcher(batch_for, n_micro, 0, n_steps, settings.device),
        autocast=settings.device.type == "cuda",
        grad_clip=float(optim.grad_clip),
    )


def run(settings: BenchSettings) -> dict[str, Any]:
    """Times every scheme, interleaved; returns the JSON-ready result."""
    if settings.seq_len > settings.model.seq_len:
        raise ValueError(
            f"bench: seq_len={settings.seq_len} exceeds the {settings.model.name} preset's "
            f"seq_len {settings.model.seq_len}"
        )
    n_steps = settings.warmup + settings.steps
    timed = variants(settings)
    # Every compiled variant is one more graph of the same block code: let each have its own.
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, len(timed))
    steps = {v: _make_step(settings, v, n_steps) for v in timed}
    times: dict[Variant, list[float]] = {v: [] for v in timed}
    first: dict[Variant, float] = {}
    peak_bytes = dict.fromkeys(timed, 0)
    n = len(timed)
    try:
        for rep in progress(range(n_steps), f"bench: {n} variants", unit="step"):
            for variant in [timed[(rep + k) % n] for k in range(n)]:
                elapsed, transient = _time(steps[variant], settings.device)
                peak_bytes[variant] = max(peak_bytes[variant], transient)
                first.setdefault(variant, elapsed)
                if rep >= settings.warmup:
                    times[variant].append(elapsed)
    finally:
        for step in steps.values():
            step.batches.close()
    tokens_per_step = settings.batch * settings.seq_len
    flops = flops_per_token(settings.model, settings.seq_len, settings.vocab_size)
    peak = peak_flops(settings.device)
    cuda = settings.device.type == "cuda"
    results = []
    for v in timed:
        median = statistics.median(times[v])
        base = statistics.median(times[Variant("bf16", "bf16", None, "none", v.compiled)])
        tokens_per_s = tokens_per_step / median
        memory = peak_bytes[v] + steps[v].state_bytes()
        quant = _quant(settings, v)
        results.append(
            {
                "scheme": v.scheme,
                "format": v.format,
                "group_size": quant.group if quant else None,
                "rotation": v.rotation,
                "act_quantizer": quant.resolved_act_quantizer if quant else None,
                "compile": v.compiled,
                "median_s": median,
                "rel_to_bf16": median / base,  # BF16 with the same compile setting
                "tokens_per_s": tokens_per_s,
                "mfu": mfu(tokens_per_s, flops, peak),
                "peak_memory_gb": memory / 1e9 if cuda else None,
                "first_step_s": first[v],  # includes compilation
                "times_s": times[v],
            }
        )
    device_name = torch.cuda.get_device_name(settings.device) if cuda else "cpu"
    return {
        "model": settings.model.name,
        "n_params": settings.model.n_params,
        "vocab_size": settings.vocab_size,
        "batch": settings.batch,
        "micro_batch": settings.micro_batch,
        "seq_len": settings.seq_len,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "format": ",".join(settings.formats),
        "group_sizes": list(settings.group_sizes),
        "act_quantizer": settings.act_quantizer,
        "rotation": ",".join(settings.rotations),
        "compile": "both" if len(settings.compile) > 1 else settings.compile[0],
        "device": device_name,
        "threads": torch.get_num_threads(),
        "flops_per_token": flops,
        "peak_flops": peak,
        "results": results,
    }


def _time(step: Callable[[], None], device: torch.device) -> tuple[float, int]:
    """Seconds of one step and, on CUDA, the bytes it allocated beyond what was live before.

    The other schemes' models share the device, so a scheme's peak memory is reported as this
    transient peak plus its own parameters and optimizer state.
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    transient = torch.cuda.max_memory_allocated(device) - before if cuda else 0
    return elapsed, transient
