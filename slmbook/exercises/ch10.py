"""Chapter 10's exercises: RMSNorm by hand, and the GELU layer as large as one of Qwen3's SwiGLU layers."""

from __future__ import annotations

import torch

from slmbook.config import QWEN3_0_6B
from slmbook.exercises import Result, exact_int, not_attempted, verdict
from slmbook.norms import RMSNorm


def check_rmsnorm(fn) -> Result:
    """Write fn(x, weight, eps) -> RMSNorm of x over its last dim. Checked against slmbook.norms.RMSNorm."""
    name = "chapter 10: RMSNorm by hand"
    hint = "divide x by sqrt(mean(x**2 over the last dim) + eps), then multiply by weight"
    if fn is None:
        return not_attempted(name)
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


def check_gelu_hidden_matching_qwen3_swiglu(answer) -> Result:
    """A GELU feed-forward layer (up_proj and down_proj, no biases) of width QWEN3_0_6B.dim: which
    hidden size gives it exactly the parameters of one of Qwen3-0.6B's SwiGLU layers? An integer."""
    name = "chapter 10: a GELU layer as large as Qwen3's SwiGLU"
    if answer is None:
        return not_attempted(name)
    swiglu = 3 * QWEN3_0_6B.dim * QWEN3_0_6B.hidden_dim
    expected = swiglu // (2 * QWEN3_0_6B.dim)
    return verdict(name, answer, ok=exact_int(answer, expected),
                   hint="SwiGLU has three dim x hidden_dim matrices (gate_proj, up_proj, down_proj), a GELU "
                        "layer two (up_proj, down_proj); set 2 x dim x h equal to the SwiGLU count and solve for h",
                   success=f"correct: {expected:,}, 1.5 x Qwen3's hidden_dim of {QWEN3_0_6B.hidden_dim:,}: the "
                           f"same {swiglu:,} parameters spent on one wider matrix pair instead of a gate")
