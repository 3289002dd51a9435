"""Model shapes: the yaml files in ``conf/model/`` are the single source of truth.

``n_params`` follows the paper's convention (non-embedding N = the weights of the blocks'
linear layers), because that is the N the scaling law is fitted on.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qat_sweep.common import structured_fields
from qat_sweep.config_dirs import options, packaged_dir, user_dirs

CONF_DIR: Path = packaged_dir("conf")  # the shipped configs; see qat_sweep.config_dirs

# The paper's presets (docs/science.md, model shapes), in size order; everything else is a small preset.
PAPER_PRESETS: tuple[str, ...] = ("74M", "145M", "297M", "595M", "973M", "2.8B")
# Their vocabulary, the OLMo-2 tokenizer's (= conf/data/olmo2.yaml): estimates assume it for a
# paper preset whose data is not prepared yet.
PAPER_VOCAB = 100_278
# Weight initialisations (docs/science.md, choices the paper leaves open): olmo2 = N(0, 0.02)
# truncated at 3 sigma for every weight (OLMo-2's released configs); scaled = N(0, 0.02) with
# the residual outputs (o, down) at 0.02 / sqrt(2 L), GPT-2 style (this project's first choice).
INITS: tuple[str, ...] = ("olmo2", "scaled")
# Model settings added after the first sweeps ran, at the values those runs used: a run's
# identity leaves them out at these values, so runs that set them keep their earlier run_keys.
EARLIER_MODEL_VALUES: dict[str, Any] = {"init": "scaled", "qk_norm": False, "z_loss": 0.0}


@dataclass(frozen=True)
class ModelConfig:
    """Shape and the per-size training hyperparameters of one Llama-3-style model."""

    name: str
    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int | None
    seq_len: int
    batch_seqs: int
    lr: float
    warmup_steps: int
    rope_theta: float
    norm_eps: float
    init: str = "olmo2"  # olmo2 | scaled (INITS)
    qk_norm: bool = False  # RMSNorm on the q and k projections' outputs (OLMo-2: true)
    z_loss: float = 0.0  # weight of the z-loss mean(logsumexp(logits)^2) (OLMo-2: 1e-5)

    def __post_init__(self) -> None:
        for field in ("n_layers", "hidden_size", "ffn_size", "n_heads", "n_kv_heads", "seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"model {self.name!r}: {field} must be a positive int, got {value!r}"
                )
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"model {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                f"n_heads {self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model {self.name!r}: n_heads {self.n_heads} is not a multiple of "
                f"n_kv_heads {self.n_kv_heads} (grouped-query attention)"
            )
        if self.head_dim % 2:
            raise ValueError(f"model {self.name!r}: head_dim {self.head_dim} must be even for RoPE")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(f"model {self.name!r}: vocab_size must be positive or null")
        if self.init not in INITS:
            raise ValueError(
                f"model.init={self.init!r}: unknown initialisation; allowed: {', '.join(INITS)}"
            )
        if not (isinstance(self.z_loss, (int, float)) and 0 <= self.z_loss < float("inf")):
            raise ValueError(f"model.z_loss={self.z_loss!r}: allowed: a number >= 0")
        if not self.norm_eps > 0:
            raise ValueError(f"model.norm_eps={self.norm_eps!r}: allowed: a number > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_params(self) -> int:
        """Non-embedding N: q, k, v, o and gate, up, down weights of every block."""
        d = self.hidden_size
        attention = 2 * d * d + 2 * d * self.kv_dim
        mlp = 3 * d * self.ffn_size
        return self.n_layers * (attention + mlp)

    def n_params_total(self, vocab_size: int | None = None) -> int:
        """All parameters: N plus untied embedding and lm_head plus the RMSNorm gains (the
        q and k norms' with ``qk_norm``)."""
        vocab = vocab_size if vocab_size is not None else self.vocab_size
        if vocab is None:
            raise ValueError(f"model {self.name!r}: vocab_size is null; pass the tokenizer's size")
        per_layer = 2 * self.hidden_size + (self.hidden_size + self.kv_dim) * self.qk_norm
        norms = self.n_layers * per_layer + self.hidden_size
        return self.n_params + 2 * vocab * self.hidden_size + norms


def plain_dict(cfg_node: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A resolved plain dict from a Hydra node or a mapping (config groups arrive as either)."""
    raw = (
        OmegaConf.to_container(cfg_node, resolve=True)
        if isinstance(cfg_node, DictConfig)
        else cfg_node
    )
    return dict(raw)  # type: ignore[arg-type]


def model_config_from(cfg_node: DictConfig | Mapping[str, Any]) -> ModelConfig:
    """Builds a ModelConfig from a Hydra node or dict, so custom shapes can live in yaml."""
    # A plan checks each of a few shapes hundreds of times. As cache keys, JSON texts keep 3,
    # 3.0 and true apart (equal, and hashing alike, as Python values).
    return _model_config(json.dumps(plain_dict(cfg_node), default=str))


@functools.lru_cache(maxsize=1024)
def _model_config(text: str) -> ModelConfig:
    values, problems = structured_fields(ModelConfig, json.loads(text))
    if problems:
        raise ValueError("model config: " + "; ".join(problems))
    return ModelConfig(**values)


def conf_dirs() -> list[Path]:
    """The user's conf/ (working directory or --config-dir) first, then the packaged one."""
    return [*user_dirs("conf"), CONF_DIR]


def _preset_files() -> dict[str, Path]:
    return options(conf_dirs(), "model")


def available_presets() -> list[str]:
    """Preset names from ``conf/model``: paper presets in size order, then the rest by N."""
    names = list(_preset_files())
    paper = [n for n in PAPER_PRESETS if n in names]
    others = sorted((n for n in names if n not in PAPER_PRESETS), key=lambda n: _load(n).n_params)
    return paper + others


def load_preset(name: str) -> ModelConfig:
    """The ModelConfig of a named preset; ValueError listing the allowed names otherwise."""
    allowed = available_presets()
    if name not in allowed:
        raise ValueError(f"unknown model preset {name!r}; allowed: {', '.join(allowed)}")
    return _load(name)


def _load(name: str) -> ModelConfig:
    path = _preset_files()[name]
    config = model_config_from(OmegaConf.load(path))
    if config.name != name:
        raise ValueError(f"{path} declares name {config.name!r}; they must match")
    return config
