"""Chapter 10's exercises: RMSNorm by hand and the size of a SwiGLU layer."""

from __future__ import annotations

import torch

from slmbook.config import QWEN3_0_6B
from slmbook.exercises import Result, exact_int, verdict
from slmbook.norms import RMSNorm


def check_rmsnorm(fn) -> Result:
    """Write fn(x, weight, eps) -> RMSNorm of x over its last dim. Checked against slmbook.norms.RMSNorm."""
    name = "chapter 10: RMSNorm by hand"
    hint = "divide x by sqrt(mean(x**2 over the last dim) + eps), then multiply by weight"
    if fn is None:
        return verdict(name, None, False, hint=hint)
    generator = torch.Generator().manual_seed(10)
    for shape, eps in (((4,), 1e-6), ((3, 8), 1e-5), ((2, 5, 32), 1e-6)):
        x = torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 1
        weight = torch.randn(shape[-1], generator=generator, dtype=torch.float64)
        norm = RMSNorm(shape[-1], eps=eps).double()
        with torch.no_grad():
            norm.weight.copy_(weight)
            expected = norm(x)
        try:
            got = torch.as_tensor(fn(x.clone(), weight.clone(), eps), dtype=torch.float64)
        except Exception as error:
            return Result(name, "wrong", f"your function raised {type(error).__name__}: {error}")
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-6):
            return verdict(name, fn, False, hint=f"{hint} (failed for shape {shape})")
    return verdict(name, fn, True, hint=hint, success="correct: your RMSNorm matches slmbook's")


def check_qwen3_swiglu_parameters(answer) -> Result:
    """How many parameters has one SwiGLU feed-forward layer of Qwen3-0.6B (no biases)?"""
    expected = 3 * QWEN3_0_6B.dim * QWEN3_0_6B.hidden_dim
    return verdict("chapter 10: Qwen3-0.6B SwiGLU parameters", answer,
                   ok=exact_int(answer, expected),
                   hint="three matrices: gate_proj and up_proj (dim x hidden_dim) and down_proj (hidden_dim x dim); "
                        "QWEN3_0_6B has dim 1024 and hidden_dim 3072",
                   success=f"correct: {expected:,} per layer, {QWEN3_0_6B.n_layers * expected:,} over the "
                           f"{QWEN3_0_6B.n_layers} layers")
