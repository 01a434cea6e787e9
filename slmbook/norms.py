"""Normalisation layers: keep every token's vector at a steady scale (chapter 10).

LayerNorm (Ba et al. 2016) removes each vector's mean and divides by its standard deviation, then
applies a learned scale and shift. RMSNorm (Zhang & Sennrich 2019) skips the mean and the shift and
only divides by the root mean square: one reduction instead of two, no bias, and in practice the
same quality, which is why Llama and Qwen use it. Both are written out here so that the difference
is one line; the tests check them against `torch.nn.LayerNorm`, `torch.nn.RMSNorm` and
`transformers`' Qwen3RMSNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from slmbook.config import positive_int


def _check(dim, eps) -> None:
    positive_int("dim", dim)
    if not eps > 0:
        raise ValueError(f"eps={eps!r}: must be > 0")


class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps) over the last dim.

    The statistics are taken in float32 even for a bfloat16 model (as Qwen does): squaring in
    bfloat16 loses the small values that decide the scale.
    """

    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None):
        super().__init__()
        _check(dim, eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.Module):
    """y = weight * (x - mean) / sqrt(var + eps) + bias over the last dim (biased variance)."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype: torch.dtype | None = None):
        super().__init__()
        _check(dim, eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        centred = x32 - x32.mean(dim=-1, keepdim=True)  # the step RMSNorm leaves out
        normed = centred * torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype) + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


NORMS = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def make_norm(kind: str, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None) -> nn.Module:
    """A norm layer by name: 'rmsnorm' or 'layernorm'."""
    if kind not in NORMS:
        raise ValueError(f"norm kind={kind!r} is unknown; allowed: {sorted(NORMS)}")
    return NORMS[kind](dim, eps, dtype=dtype)
