"""A planned run's compute from its resolved config, counted by ``estimates.flops``: plan's
GPU-hours and sizing's wall clock both take it from here, so they cannot disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qat_sweep.common import parse_tokens
from qat_sweep.data.tokenfiles import MANIFEST, read_manifest
from qat_sweep.estimates.flops import flops_per_token, run_flops
from qat_sweep.model.presets import PAPER_VOCAB, model_config_from


def vocab_size(config: dict[str, Any]) -> int:
    """The model's vocabulary: its own, else the prepared data's, else the OLMo-2 tokenizer's."""
    if config["model"].get("vocab_size"):
        return int(config["model"]["vocab_size"])
    if config["data"].get("vocab_size"):
        return int(config["data"]["vocab_size"])
    data_dir = Path(str(config["data"].get("dir") or ""))
    if (data_dir / MANIFEST).is_file():
        try:
            return int(read_manifest(data_dir)["vocab_size"])
        except (ValueError, FileNotFoundError):
            pass  # a broken manifest: plan's data check names it; size as the paper's data
    return PAPER_VOCAB


def model_flops(config: dict[str, Any]) -> float:
    """FLOPs the run executes: the model count over its tokens, activation recompute included."""
    model = model_config_from(config["model"])
    per_token = flops_per_token(model, int(config["train"]["seq_len"]), vocab_size(config))
    recompute = bool(config["train"].get("activation_checkpointing"))
    return run_flops(per_token, parse_tokens(config["tokens"]), recompute)
