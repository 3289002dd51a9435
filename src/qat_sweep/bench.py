"""Throughput of each precision scheme relative to BF16, measured side by side in one process.

Schemes are interleaved within every repetition (in a rotating order) so clock drift and
thermal effects hit all of them equally; warm-up steps are excluded and medians reported.
FLOPs per token (PaLM convention, no causal-mask discount):
``6 * (N + V * d) + 12 * n_layers * seq_len * d``, where N is the non-embedding parameter
count, V * d the lm_head and the last term the attention score and value matmuls.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from qat_sweep.model import Transformer, build_model
from qat_sweep.presets import PAPER_PRESETS, ModelConfig, load_preset
from qat_sweep.schemes import SCHEMES, QuantConfig

# Dense BF16 tensor-core peaks (no sparsity), matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS: dict[str, float] = {"A100": 312e12, "H100": 989e12, "H200": 989e12}
# H100 PCIe/NVL have lower peaks that are not tabled: MFU unknown rather than wrong.
_UNTABLED_VARIANTS = ("H100 PCIe", "H100 NVL")
OLMO2_VOCAB = 100278  # PAPER.md: the OLMo-2 tokenizer is the natural full-scale default
SMALL_VOCAB = 4096  # the demo's local BPE size

DEFAULTS: dict[str, str] = {
    "model": "1M",
    "batch": "8",
    "seq_len": "",  # empty: the preset's seq_len
    "steps": "10",
    "warmup": "3",
    "schemes": "bf16,w4a4,w4a16,w16a4,w4a4_fc2a8",
    "format": "int4",
    "group_size": "32",
    "act_quantizer": "auto",
    "vocab_size": "",  # empty: the preset's, else OLMo-2 size for paper presets, 4096 otherwise
    "compile": "false",
    "device": "auto",
    "seed": "0",
    "json": "",  # a path, or '-' for stdout
}


@dataclass(frozen=True)
class BenchSettings:
    model: ModelConfig
    batch: int
    seq_len: int
    steps: int
    warmup: int
    schemes: tuple[str, ...]
    format: str
    group_size: int | str
    act_quantizer: str
    vocab_size: int
    compile: bool
    device: torch.device
    seed: int
    json: str


def parse_args(argv: list[str]) -> BenchSettings:
    """key=value arguments; ValueError naming any unknown key or malformed value."""
    raw = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(
                f"bench: bad argument {arg!r}; expected key=value with keys {list(DEFAULTS)}"
            )
        raw[key] = value
    model = load_preset(raw["model"])
    schemes = tuple(s for s in raw["schemes"].split(",") if s)
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"bench: unknown schemes {unknown}; allowed: {', '.join(SCHEMES)}")
    if "bf16" not in schemes:
        schemes = ("bf16", *schemes)
    if raw["vocab_size"]:
        vocab = _int("vocab_size", raw["vocab_size"])
    else:
        vocab = model.vocab_size or (OLMO2_VOCAB if model.name in PAPER_PRESETS else SMALL_VOCAB)
    group = raw["group_size"]
    return BenchSettings(
        model=model,
        batch=_int("batch", raw["batch"]),
        seq_len=_int("seq_len", raw["seq_len"]) if raw["seq_len"] else model.seq_len,
        steps=_int("steps", raw["steps"]),
        warmup=_int("warmup", raw["warmup"], minimum=0),
        schemes=schemes,
        format=raw["format"],
        group_size=group if group == "channel" else _int("group_size", group),
        act_quantizer=raw["act_quantizer"],
        vocab_size=vocab,
        compile=_bool("compile", raw["compile"]),
        device=_device(raw["device"]),
        seed=_int("seed", raw["seed"], minimum=0),
        json=raw["json"],
    )


def _int(key: str, value: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"bench: {key}={value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"bench: {key}={number} must be >= {minimum}")
    return number


def _bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"bench: {key}={value!r} must be true or false")
    return value.lower() in ("true", "1")


def _device(value: str) -> torch.device:
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value not in ("cpu", "cuda") and not value.startswith("cuda:"):
        raise ValueError(f"bench: device={value!r}; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(value)


def flops_per_token(model: ModelConfig, seq_len: int, vocab_size: int) -> float:
    """Training FLOPs per token: 6 (N + V d) + 12 L T d (see the module docstring)."""
    d = model.hidden_size
    return 6.0 * (model.n_params + vocab_size * d) + 12.0 * model.n_layers * seq_len * d


def peak_flops(device: torch.device) -> float | None:
    """The device's dense BF16 peak, or None when it is not in the table (MFU then null)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if any(variant in name for variant in _UNTABLED_VARIANTS):
        return None
    return next((peak for marker, peak in PEAK_BF16_FLOPS.items() if marker in name), None)


def _make_step(settings: BenchSettings, scheme: str) -> Callable[[], None]:
    """Builds one scheme's model and optimizer and returns a closure doing one training step."""
    quant = None
    if scheme != "bf16":
        quant = QuantConfig(scheme, settings.format, settings.group_size, settings.act_quantizer)
    torch.manual_seed(settings.seed)
    model: Transformer = build_model(settings.model, quant, settings.vocab_size)
    model = model.to(settings.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    forward = torch.compile(model) if settings.compile else model
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch, settings.seq_len + 1)
    tokens = torch.randint(0, settings.vocab_size, shape, generator=generator).to(settings.device)
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    cuda = settings.device.type == "cuda"

    def step() -> None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        with autocast:
            loss = forward(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(settings: BenchSettings) -> dict[str, Any]:
    """Times every scheme, interleaved; returns the JSON-ready result."""
    if settings.seq_len > settings.model.seq_len:
        raise ValueError(
            f"bench: seq_len={settings.seq_len} exceeds the {settings.model.name} preset's "
            f"seq_len {settings.model.seq_len}"
        )
    steps = {scheme: _make_step(settings, scheme) for scheme in settings.schemes}
    times: dict[str, list[float]] = {scheme: [] for scheme in settings.schemes}
    n = len(settings.schemes)
    for rep in range(settings.warmup + settings.steps):
        order = [settings.schemes[(rep + k) % n] for k in range(n)]
        for scheme in order:
            elapsed = _time(steps[scheme], settings.device)
            if rep >= settings.warmup:
                times[scheme].append(elapsed)
    tokens_per_step = settings.batch * settings.seq_len
    flops = flops_per_token(settings.model, settings.seq_len, settings.vocab_size)
    peak = peak_flops(settings.device)
    base = statistics.median(times["bf16"])
    results = []
    for scheme in settings.schemes:
        median = statistics.median(times[scheme])
        tokens_per_s = tokens_per_step / median
        results.append(
            {
                "scheme": scheme,
                "median_s": median,
                "rel_to_bf16": median / base,
                "tokens_per_s": tokens_per_s,
                "mfu": flops * tokens_per_s / peak if peak else None,
                "times_s": times[scheme],
            }
        )
    device_name = (
        torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else "cpu"
    )
    return {
        "model": settings.model.name,
        "n_params": settings.model.n_params,
        "vocab_size": settings.vocab_size,
        "batch": settings.batch,
        "seq_len": settings.seq_len,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "format": settings.format,
        "group_size": settings.group_size,
        "act_quantizer": settings.act_quantizer,
        "compile": settings.compile,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "flops_per_token": flops,
        "peak_flops": peak,
        "results": results,
    }


def _time(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the result, one row per scheme."""
    header = (
        f"bench {result['model']} (N={result['n_params']:,}, vocab {result['vocab_size']}) "
        f"batch={result['batch']} seq_len={result['seq_len']} {result['format']} "
        f"G={result['group_size']} compile={result['compile']} on {result['device']}, "
        f"median of {result['steps']} steps"
    )
    lines = [header, f"{'scheme':<14}{'ms/step':>10}{'vs bf16':>9}{'tokens/s':>12}{'MFU':>8}"]
    for row in result["results"]:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
        lines.append(
            f"{row['scheme']:<14}{1000 * row['median_s']:>10.1f}{row['rel_to_bf16']:>8.2f}x"
            f"{row['tokens_per_s']:>12,.0f}{mfu:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``qat-sweep bench key=value ...``; returns the process exit code."""
    try:
        settings = parse_args(argv)
        result = run(settings)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if settings.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    if settings.json:
        with open(settings.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
