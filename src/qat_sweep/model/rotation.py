"""Block-diagonal Hadamard rotation along the reduction dimension (docs/formats.md, rotation).

A site's input x and its linears' weight rows W are both multiplied by the same orthogonal
R = D H, with H block-diagonal of normalised Sylvester Hadamard blocks and D an optional
random +-1 diagonal: (x R)(W R)^T = x W^T, so without quantization the layer computes the same
product, while each block's outliers are spread over the block before it is quantized.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def hadamard_matrix(n: int) -> Tensor:
    """The normalised Sylvester Hadamard matrix of order ``n`` (a power of two), fp32:
    symmetric and orthogonal, entries +-1/sqrt(n)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard order {n} is not a power of two; allowed: 1, 2, 4, 8, ...")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).float()


def random_signs(dim: int, seed: int) -> Tensor:
    """+-1 per position of the reduction dimension, drawn from ``seed`` (the same for every
    site of that width, so a rotation is a function of (dim, block, seed))."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (dim,), generator=generator).float() * 2 - 1


class HadamardRotation(nn.Module):
    """x -> x D H along the last dimension, computed in fp32 and cast back to x's dtype.

    The matrix and signs are non-persistent buffers: they follow from (dim, block, seed), so
    checkpoints hold none of them and load into a model with or without rotation alike.
    """

    def __init__(self, dim: int, block: int, seed: int | None = None):
        super().__init__()
        if dim % block:
            raise ValueError(
                f"rotation block {block} does not divide the dimension {dim}; allowed: a power "
                f"of two dividing {dim}"
            )
        self.dim, self.block, self.seed = dim, block, seed
        self.register_buffer("matrix", hadamard_matrix(block), persistent=False)
        signs = random_signs(dim, seed) if seed is not None else None
        self.register_buffer("signs", signs, persistent=False)
        self.quantizing = True  # off: the identity, with its site's quantizers (layers)

    def rotate(self, x: Tensor) -> Tensor:
        """The rotated ``x`` in fp32 (what a quantizer reads); autocast would run the block
        products in bf16, so it is off here."""
        xf = x.float()
        if self.signs is not None:
            xf = xf * self.signs
        blocks = xf.reshape(*x.shape[:-1], x.shape[-1] // self.block, self.block)
        with torch.autocast(x.device.type, enabled=False):
            return (blocks @ self.matrix).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.rotate(x).to(x.dtype) if self.quantizing else x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, block={self.block}, seed={self.seed}"
