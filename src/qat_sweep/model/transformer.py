"""Llama-3-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases).

Quantization (and a rotation, docs/formats.md) enters only through the block linears and the
four per-block input quantizers of ``layers``; scheme ``bf16`` builds exactly the modules of
``quant=None``, so it is bitwise the plain model. Embeddings and lm_head are never quantized
and are untied; their vocabulary rows are padded to a multiple of ``VOCAB_MULTIPLE``
(tensor-core friendly shapes), the padded rows start at zero and the loss and logits cover the
real vocabulary only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qat_sweep.common import switch
from qat_sweep.model.layers import (
    QuantLinear,
    make_act_quantizer,
    make_linear,
    make_rotation,
    site_spec,
)
from qat_sweep.model.precision import QuantConfig, check_group_size
from qat_sweep.model.presets import ModelConfig
from qat_sweep.model.quantizers import QuantFormat

INIT_STD = 0.02
INIT_CUTOFF = 3.0  # olmo2: the normal truncated at 3 sigma (OLMo-2's init_cutoff_factor)
VOCAB_MULTIPLE = 128
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back, as in Llama."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight.type_as(x)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables, shape (seq_len, head_dim), for the rotate-half RoPE convention."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates (batch, heads, seq, head_dim) queries or keys in fp32."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


class Attention(nn.Module):
    """Grouped-query causal self-attention; q, k, v read one shared quantized input."""

    def __init__(self, cfg: ModelConfig, quant: QuantConfig | None):
        super().__init__()
        d, kv = cfg.hidden_size, cfg.kv_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        w_qkv, w_o = _weight_format(quant, "qkv"), _weight_format(quant, "o")
        rot_qkv, rot_o = make_rotation(quant, d), make_rotation(quant, d)
        self.act_qkv = make_act_quantizer(quant, "qkv", d, rot_qkv)
        self.q = make_linear(d, d, w_qkv, quant, rot_qkv)
        self.k = make_linear(d, kv, w_qkv, quant, rot_qkv)
        self.v = make_linear(d, kv, w_qkv, quant, rot_qkv)
        self.act_o = make_act_quantizer(quant, "o", d, rot_o)
        self.o = make_linear(d, d, w_o, quant, rot_o)
        # OLMo-2's qk-norm: one RMSNorm over the whole q (and k) projection, before the heads.
        self.q_norm = RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(kv, cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        xq = self.act_qkv(x)
        q = self.q_norm(self.q(xq)).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k(xq)).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(xq).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if _SDPA_HAS_GQA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.o(self.act_o(y))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate and up read one shared quantized input."""

    def __init__(self, cfg: ModelConfig, quant: QuantConfig | None):
        super().__init__()
        d, f = cfg.hidden_size, cfg.ffn_size
        w_fc1, w_fc2 = _weight_format(quant, "fc1"), _weight_format(quant, "fc2")
        rot_fc1, rot_fc2 = make_rotation(quant, d), make_rotation(quant, f)
        self.act_fc1 = make_act_quantizer(quant, "fc1", d, rot_fc1)
        self.gate = make_linear(d, f, w_fc1, quant, rot_fc1)
        self.up = make_linear(d, f, w_fc1, quant, rot_fc1)
        self.act_fc2 = make_act_quantizer(quant, "fc2", f, rot_fc2)
        self.down = make_linear(f, d, w_fc2, quant, rot_fc2)

    def forward(self, x: Tensor) -> Tensor:
        xq = self.act_fc1(x)
        return self.down(self.act_fc2(F.silu(self.gate(xq)) * self.up(xq)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, quant: QuantConfig | None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg, quant)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg, quant)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


def padded_vocab(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Rows of the embedding and lm_head: the vocabulary rounded up to ``multiple``."""
    return -(-vocab_size // multiple) * multiple


class Transformer(nn.Module):
    """Decoder-only LM: logits, or the mean fp32 cross-entropy when targets are given."""

    def __init__(
        self,
        cfg: ModelConfig,
        quant: QuantConfig | None,
        vocab_size: int,
        vocab_multiple: int = VOCAB_MULTIPLE,
    ):
        super().__init__()
        self.config = cfg
        self.quant = quant
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg, quant) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, vocab_size, bias=False)
        # Built at the real size, then padded: the random stream does not see the padding.
        rows = padded_vocab(vocab_size, vocab_multiple)
        self.embed.weight = _pad_rows(self.embed.weight, rows)
        self.lm_head.weight = _pad_rows(self.lm_head.weight, rows)
        self.embed.num_embeddings = self.lm_head.out_features = rows
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """``model.init``: olmo2 draws every weight from N(0, 0.02) truncated at 3 sigma;
        scaled draws N(0, 0.02) untruncated, the residual outputs (o, down) at 0.02 / sqrt(2 L).
        Norm gains start at 1; a learned weight quantizer then starts from its weight.

        Only the real vocabulary rows are drawn (padded rows are zero), so the random stream,
        and with it the whole run, is the same whatever the padding.
        """
        scaled = self.config.init == "scaled"
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.endswith((".attn.o", ".mlp.down"))
                weight = module.weight
                if module is self.embed or module is self.lm_head:
                    nn.init.zeros_(weight[self.vocab_size :])
                    weight = weight[: self.vocab_size]
                if scaled:
                    nn.init.normal_(weight, std=residual_std if is_residual_out else INIT_STD)
                else:
                    cut = INIT_CUTOFF * INIT_STD
                    nn.init.trunc_normal_(weight, std=INIT_STD, a=-cut, b=cut)
            if isinstance(module, QuantLinear):
                module.reset_quantizer()

    @property
    def n_params(self) -> int:
        """Non-embedding N: the weights of the blocks' linear layers (paper convention)."""
        return sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        t = idx.shape[1]
        if t > self.rope_cos.shape[0]:
            raise ValueError(
                f"sequence length {t} exceeds the model's seq_len {self.rope_cos.shape[0]}"
            )
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits[..., : self.vocab_size]
        return self.loss(logits, targets)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean fp32 cross-entropy over the real vocabulary (the padded columns are dropped).

        With ``model.z_loss`` the gradient also carries z_loss x mean(logsumexp^2), but the
        value stays the cross-entropy (the z term enters as z - z.detach(), exactly 0), so the
        recorded, smoothed and evaluated loss is the same quantity whatever the z-loss.
        """
        real = logits[..., : self.vocab_size].float().flatten(0, 1)
        ce = F.cross_entropy(real, targets.flatten())
        if not self.config.z_loss:
            return ce
        z = self.config.z_loss * torch.logsumexp(real, dim=-1).square().mean()
        return ce + (z - z.detach())


def compile_enabled(setting: object, device_type: str) -> bool:
    """``train.compile``: ``auto`` compiles on CUDA (where it pays) and not on CPU."""
    value = switch(setting, "train.compile")
    return device_type == "cuda" if value == "auto" else value == "true"


def compile_blocks(model: Transformer) -> Transformer:
    """torch.compile each block's forward and the loss, in place, before DDP/FSDP wrapping.

    Per-block compilation (as torchtitan does) traces one block graph that every layer reuses
    and fuses the fake quantizer's elementwise chain; the loss fuses the fp32 upcast of the
    logits into the cross-entropy. Only forwards are compiled, not module calls: module hooks
    (FSDP's all-gathers, activation checkpointing) stay outside the graphs, and parameter
    names do not change, so checkpoints move freely between compiled and eager runs.
    ``fullgraph`` makes a graph break an error instead of a silent slowdown. ``dynamic=False``:
    a run's shapes and formats never change, and where one process compiles several formats
    (bench) automatic dynamic would trace the second one's numbers (qmax, divisor) as symbols,
    which an autograd.Function cannot lift; each model gets graphs of its own constants.
    """
    for block in model.blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=False)
    model.loss = torch.compile(model.loss, fullgraph=True, dynamic=False)
    return model


def _pad_rows(weight: Tensor, rows: int) -> nn.Parameter:
    padding = weight.new_zeros(rows - weight.shape[0], weight.shape[1])
    return nn.Parameter(torch.cat([weight.detach(), padding]))


def _weight_format(quant: QuantConfig | None, site: str) -> QuantFormat | None:
    return None if quant is None else site_spec(quant, quant.site_formats(site)[0])


def validate(cfg: ModelConfig, quant: QuantConfig | None, vocab_size: int | None) -> int:
    """Checks everything build_model needs before any tensor is allocated; returns the vocab."""
    vocab = vocab_size if vocab_size is not None else cfg.vocab_size
    if vocab is None or isinstance(vocab, bool) or not isinstance(vocab, int) or vocab <= 0:
        raise ValueError(
            f"model {cfg.name!r}: vocab_size is {vocab!r}; pass the tokenizer's vocabulary size"
        )
    if quant is not None:
        check_group_size(cfg, quant)
    return vocab


def build_model(
    model_cfg: ModelConfig,
    quant: QuantConfig | None,
    vocab_size: int | None = None,
    vocab_multiple: int = VOCAB_MULTIPLE,
) -> Transformer:
    """Validates the combination, then builds the (fake-)quantized model on the current device."""
    vocab = validate(model_cfg, quant, vocab_size)
    return Transformer(model_cfg, quant, vocab, vocab_multiple)
