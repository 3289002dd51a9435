"""Peak memory per GPU of one training run, itemised, from its shapes alone (no tensor built).

Counted the way autograd holds memory: the bytes each op of ``qat_sweep.model.transformer`` saves for
backward (checked against ``torch.autograd.graph.saved_tensors_hooks`` in tests/test_memory.py),
plus parameters, gradients and AdamW states, plus the transients that peak on top of them (the
logits' fp32 copies around the loss, the fake quantizer's fp32 temporaries, foreach AdamW's
temporaries, the evaluation batch). Three numeric settings cover the trainer:

* ``fp32``: CPU training (no autocast), every tensor 4 bytes;
* ``bf16``: fp32 parameters under CUDA bf16 autocast, alike for one process, DDP and FSDP
  (FSDP gathers fp32 parameters, so twins compute alike whatever their parallelism); the
  residual stream and norms stay fp32, linear outputs are bf16, and autocast casts an fp32
  linear input once per consumer (q, k and v each hold their own bf16 copy) and each weight
  once per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qat_sweep.common import PARALLELISMS
from qat_sweep.model.precision import SCHEMES, QuantConfig
from qat_sweep.model.presets import ModelConfig

# What a run uses once `auto` is resolved: the memory of each is estimated.
RESOLVED_PARALLELISMS = tuple(p for p in PARALLELISMS if p != "auto")
DTYPES = ("bf16", "fp32")
GB = 1e9
FP32, BF16, MASK, INDEX = 4, 2, 1, 8
# Each quantized site input of (tokens, dim) holds about five fp32 working copies while it is
# fake-quantized (x, |x|, x/s, the clamped codes, codes*s): the largest transient of a block.
QUANT_TEMPORARIES = 5 * FP32


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by item; ``peak`` is the largest of the three phases of a step."""

    state: dict[str, float]  # alive the whole run: parameters, gradients, optimizer, buffers
    saved: dict[str, float]  # held from forward to backward: activations, quantizer tensors
    transient: dict[str, float]  # short-lived peaks on top of the saved tensors
    eval: dict[str, float]  # the evaluation forward (no saved tensors, gradients freed)
    notes: tuple[str, ...] = field(default=())

    @property
    def state_bytes(self) -> float:
        return sum(self.state.values())

    @property
    def saved_bytes(self) -> float:
        return sum(self.saved.values())

    @property
    def train_peak(self) -> float:
        """Forward+backward: state + saved tensors + the larger of the two transients."""
        step_free = {k: v for k, v in self.transient.items() if k != "optimizer_step"}
        return self.state_bytes + self.saved_bytes + max(step_free.values(), default=0.0)

    @property
    def step_peak(self) -> float:
        return self.state_bytes + self.transient.get("optimizer_step", 0.0)

    @property
    def eval_peak(self) -> float:
        return self.state_bytes - self.state.get("gradients", 0.0) + sum(self.eval.values())

    @property
    def peak(self) -> float:
        return max(self.train_peak, self.step_peak, self.eval_peak)

    def items(self) -> dict[str, float]:
        """Every item in GB, prefixed by its phase, for tables and plan rows."""
        groups = {"state": self.state, "saved": self.saved}
        groups |= {"transient": self.transient, "eval": self.eval}
        return {f"{g}.{k}": v / GB for g, items in groups.items() for k, v in items.items()}


def _site_quant(quant: QuantConfig | None, site: str) -> tuple[bool, bool, bool]:
    """(weight quantized, input quantized, input uses LAC) of one site."""
    if quant is None or quant.scheme == "bf16":
        return False, False, False
    precision = SCHEMES[quant.scheme][site]
    act = precision.act_bits < 16
    return precision.weight_bits < 16, act, act and quant.resolved_act_quantizer == "lac"


def _quantizer_params(model: ModelConfig, quant: QuantConfig | None) -> int:
    """Learned quantizer parameters: LAC's factors, one per group position of each quantized
    site input (one per tensor), and LSQ's step (LWC's two logits) per weight group."""
    if quant is None or quant.scheme == "bf16":
        return 0
    total = 0
    per_group = {"lsq": 1, "lwc": 2}.get(quant.weight_quantizer, 0)
    for site, linears in site_linears(model).items():
        weighted, _, lac = _site_quant(quant, site)
        dim = linears[0][1]
        if lac:
            total += 1 if quant.group == "tensor" else dim // _group_elems(quant, dim)
        if weighted and per_group:
            for out_dim, in_dim in linears:
                groups = (
                    1
                    if quant.group == "tensor"
                    else out_dim * in_dim // _group_elems(quant, in_dim)
                )
                total += per_group * groups
    return total * model.n_layers


def _group_elems(quant: QuantConfig, dim: int) -> int:
    """Elements per group along a reduction dim of ``dim`` (not for per-tensor groups)."""
    return dim if quant.group == "channel" else int(quant.group)  # type: ignore[arg-type]


def site_linears(model: ModelConfig) -> dict[str, list[tuple[int, int]]]:
    """(out, in) shape of each linear a site's input feeds, per block."""
    d, kv, f = model.hidden_size, model.kv_dim, model.ffn_size
    return {"qkv": [(d, d), (kv, d), (kv, d)], "o": [(d, d)], "fc1": [(f, d)] * 2, "fc2": [(d, f)]}


def site_weights(model: ModelConfig) -> dict[str, int]:
    """Weight elements per block read by each site's linears."""
    return {site: sum(o * i for o, i in shapes) for site, shapes in site_linears(model).items()}


def _quantizer_bytes(quant: QuantConfig | None, d: int, f: int) -> tuple[float, float]:
    """Per token per block: the mask bytes that the quantized input sites save, and the fp32
    scale-gradient terms of LAC (d x_hat / d s) and of the AbsMax gradient (d s / d x)."""
    masks, scale_grads = 0.0, 0.0
    for site, dim in (("qkv", d), ("o", d), ("fc1", d), ("fc2", f)):
        _, quantized, lac_site = _site_quant(quant, site)
        absmax_grad = quantized and quant is not None and quant.absmax_grad
        masks += MASK * dim if quantized else 0.0
        scale_grads += FP32 * dim * ((lac_site or absmax_grad) + absmax_grad)
    return masks, scale_grads


def _block_weights(
    quant: QuantConfig | None, weights: dict[str, int], weight_copy: int, autocast: bool
) -> float:
    """Per block per forward: masks and quantized copies of the weights (or autocast's casts),
    and the two fp32 tensors per weight that LSQ, LWC or the AbsMax gradient keep for the
    scale's gradient (LSQ's x/s and codes, LWC's likewise, or d x_hat / d s and d s / d x)."""
    total = 0.0
    learned = quant is not None and (quant.weight_quantizer != "absmax" or quant.absmax_grad)
    for site, count in weights.items():
        quantized_weight = _site_quant(quant, site)[0]
        if quantized_weight:
            total += (MASK + weight_copy + 2 * FP32 * learned) * count
        elif autocast:
            total += BF16 * count  # autocast's cached bf16 weight cast
    return total


def _training_state(
    model: ModelConfig,
    quant: QuantConfig | None,
    vocab_size: int,
    weights: dict[str, int],
    rope: float,
    fsdp_world: int | None,
) -> dict[str, float]:
    """Parameters, gradients and AdamW state per GPU (sharded ``fsdp_world`` ways under FSDP)."""
    n_params = model.n_params_total(vocab_size) + _quantizer_params(model, quant)
    param_bytes = FP32 * n_params / (1 if fsdp_world is None else fsdp_world)
    state = {
        "parameters": param_bytes,
        "gradients": param_bytes,  # fp32; DDP buckets are views of them (gradient_as_bucket_view)
        "optimizer": 2 * param_bytes,  # AdamW exp_avg, exp_avg_sq
        "buffers": rope,
    }
    if fsdp_world is not None:
        # unsharded fp32 copies of the unit in use and the prefetched one, one unit's gradients
        unit = max(vocab_size * model.hidden_size, sum(weights.values()) + 2 * model.hidden_size)
        state["fsdp_unsharded"] = 3 * unit * FP32
    return state


def estimate_memory(
    model: ModelConfig,
    quant: QuantConfig | None,
    *,
    vocab_size: int,
    seq_len: int,
    micro_batch_seqs: int,
    eval_batch_seqs: int = 1,
    parallelism: str = "single",
    world_size: int = 1,
    activation_checkpointing: bool = False,
    dtype: str = "bf16",
    device: str = "cuda",
) -> MemoryEstimate:
    """Peak bytes per GPU of one step of ``model`` at this micro-batch and parallelism."""
    if parallelism not in RESOLVED_PARALLELISMS:
        allowed = ", ".join(RESOLVED_PARALLELISMS)
        raise ValueError(f"parallelism={parallelism!r}; allowed: {allowed}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    d, kv, f, V = model.hidden_size, model.kv_dim, model.ffn_size, vocab_size
    L, h = model.n_layers, model.n_heads
    fsdp = parallelism == "fsdp"
    bf16 = dtype == "bf16"
    autocast = bf16  # fp32 parameters under autocast, whatever the parallelism
    resid = FP32  # residual stream: the embedding's dtype
    act = BF16 if bf16 else FP32  # linear outputs
    weight_copy = BF16 if bf16 else FP32  # a quantized weight as its linear saves it

    def linear_input(dtype_bytes: int, consumers: int) -> int:
        # autocast casts an fp32 activation once per linear that reads it
        return consumers * BF16 if autocast and dtype_bytes == FP32 else dtype_bytes

    norm = (FP32 + resid) * d + FP32  # fp32 x (or its fp32 copy), the normalised x, rsqrt
    qk_norm = ((FP32 + act) * (d + kv) + 2 * FP32) * model.qk_norm  # on q and k outputs
    per_token = {  # bytes one block saves per token, by what saves it
        "norms": 2 * norm + qk_norm,
        "linear_inputs": (linear_input(resid, 3) + act + linear_input(resid, 2)) * d + act * f,
        "attention": act * (2 * d + 2 * kv) + FP32 * h,  # q, k, v, output, logsumexp
        "mlp": 3 * act * f,  # gate and up outputs, silu output
    }
    masks, lac = _quantizer_bytes(quant, d, f)
    block_token = sum(per_token.values()) + masks + lac

    weights = site_weights(model)
    block_weights = _block_weights(quant, weights, weight_copy, autocast)

    tokens = micro_batch_seqs * seq_len
    rope = 2 * seq_len * model.head_dim * FP32
    head = (norm + linear_input(resid, 1) * d + FP32 * V + 2 * INDEX) * tokens  # final norm, loss
    head += BF16 * V * d if autocast else 0.0  # lm_head's cached bf16 weight cast
    # Checkpointed blocks keep only their input; one block is recomputed at a time.
    live = 1 if activation_checkpointing else L
    blocks = (block_token - masks - lac) * tokens * live
    if activation_checkpointing:
        blocks += L * resid * d * tokens
    saved = {
        "activations": blocks + rope,
        "quantizer_masks": live * masks * tokens,
        "quantizer_lac": live * lac * tokens,
        "quantized_weights": live * block_weights,
        "logits_and_head": head,
    }

    state = _training_state(model, quant, V, weights, rope, world_size if fsdp else None)
    logits = act * V + (FP32 * V if act != FP32 else 0.0) + FP32 * V
    transient = {
        # around the loss: bf16 logits, their fp32 copy, the gradient of log_softmax
        "loss": logits * tokens,
        "block": (QUANT_TEMPORARIES * f if quant and quant.scheme != "bf16" else 2 * act * f)
        * tokens,
        # foreach AdamW holds about one fp32 copy of the parameters it steps (fused: none)
        "optimizer_step": state["parameters"] if device == "cuda" else 0.0,
    }
    eval_tokens = eval_batch_seqs * seq_len
    eval_items = {
        "logits": logits * eval_tokens,
        "activations": (2 * resid * d + QUANT_TEMPORARIES * f) * eval_tokens,
    }
    return MemoryEstimate(state=state, saved=saved, transient=transient, eval=eval_items)
