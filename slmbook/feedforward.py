"""The feed-forward half of a block: each token, alone, through a small MLP (chapter 10).

GELU feed-forward (GPT-2, BERT): up-project to hidden_dim, GELU, down-project; two matrices.

SwiGLU (Shazeer 2020; Llama, Qwen): two up-projections, one passed through SiLU acting as a *gate*
on the other, multiplied element by element, then down-projected; three matrices. The gate lets the
layer switch features on and off per token, and at the same parameter count it trains to a lower
loss. To match a GELU layer's parameters, SwiGLU's hidden_dim is about 2/3 of GELU's (Qwen3-0.6B:
dim 1024, hidden_dim 3072 = 3 x dim instead of GPT-style 4 x dim).

Parameter names follow `transformers` (gate_proj, up_proj, down_proj).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slmbook.config import positive_int


def _check(dim, hidden_dim) -> None:
    for name, value in (("dim", dim), ("hidden_dim", hidden_dim)):
        positive_int(name, value)


class SwiGLU(nn.Module):
    """down_proj( silu(gate_proj(x)) * up_proj(x) )."""

    def __init__(self, dim: int, hidden_dim: int, dtype: torch.dtype | None = None):
        super().__init__()
        _check(dim, hidden_dim)
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GELUFeedForward(nn.Module):
    """down_proj( gelu(up_proj(x)) ); `approximate="tanh"` is GPT-2's variant."""

    def __init__(self, dim: int, hidden_dim: int, approximate: str = "none", dtype: torch.dtype | None = None):
        super().__init__()
        _check(dim, hidden_dim)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate={approximate!r}: allowed 'none' (exact erf) or 'tanh'")
        self.approximate = approximate
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate=self.approximate))


def matched_swiglu_hidden_dim(gelu_hidden_dim: int, multiple_of: int = 1) -> int:
    """SwiGLU hidden size with the parameters of a GELU layer of `gelu_hidden_dim`: 2/3 of it,
    rounded up to a multiple of `multiple_of` (hardware likes multiples of 64 or 256)."""
    _check(1, gelu_hidden_dim)
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of={multiple_of!r}: must be a positive integer")
    hidden = (2 * gelu_hidden_dim + 2) // 3
    return -(-hidden // multiple_of) * multiple_of
