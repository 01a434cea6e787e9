"""Chapter 7's exercises: RoPE by hand and RoPE at Qwen3's scale."""

from __future__ import annotations

import torch

from slmbook.exercises import Result, not_attempted, verdict
from slmbook.positional import RotaryEmbedding, rope_wavelengths


def slowest_pair_wavelength(head_dim: int = 128, theta: float = 1_000_000.0) -> float:
    """Positions the slowest-turning RoPE pair needs for one full turn."""
    return float(rope_wavelengths(head_dim, theta)[-1].double())


def check_slowest_pair_turn(answer) -> Result:
    """Qwen3 uses head_dim=128 and theta=1,000,000. After how many positions has its slowest pair
    turned once around the circle (2*pi radians)? A float; 0.1% tolerance."""
    name = "chapter 7: the slowest RoPE pair"
    if answer is None:
        return not_attempted(name)
    if isinstance(answer, torch.Tensor):
        return Result(name, "wrong", f"your answer is a tensor ({answer.dtype}, shape {tuple(answer.shape)}): give "
                                     "one Python number, e.g. float(t) or t.item() for a one-element tensor")
    expected = slowest_pair_wavelength()
    ok = isinstance(answer, (int, float)) and not isinstance(answer, bool) and abs(answer - expected) <= 1e-3 * expected
    return verdict(name, answer, ok,
                   hint="pair i turns by theta**(-2i/head_dim) radians per position; the slowest is "
                        "i = head_dim/2 - 1; one turn is 2*pi radians",
                   success=f"correct: about {expected:,.0f} positions, far more than Qwen3's 40,960-token "
                           "context, so that pair never wraps around and can tell distant positions apart")


def check_rope_rotation(fn) -> Result:
    """Write fn(x, position, theta) -> x rotated by RoPE, for one head vector x of shape (head_dim,).
    Checked against slmbook.positional.RotaryEmbedding on random vectors and positions."""
    hint = ("pair i is (x[i], x[i + head_dim/2]); turn it by angle position * theta**(-2i/head_dim): "
            "(a, b) -> (a cos - b sin, a sin + b cos)")
    if fn is None:
        return not_attempted("chapter 7: RoPE by hand")
    generator = torch.Generator().manual_seed(7)
    for head_dim, theta, position in ((4, 10_000.0, 3), (16, 10_000.0, 27), (64, 1_000_000.0, 250)):
        x = torch.randn(head_dim, generator=generator, dtype=torch.float64)
        rope = RotaryEmbedding(head_dim, position + 1, theta)
        expected = rope(x.expand(position + 1, head_dim).contiguous())[position]
        try:
            got = torch.as_tensor(fn(x.clone(), position, theta), dtype=torch.float64)
        except Exception as error:  # the reader's code: report, never crash the notebook
            return Result("chapter 7: RoPE by hand", "wrong", f"your function raised {type(error).__name__}: {error}")
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4):
            return verdict("chapter 7: RoPE by hand", fn, False, hint=f"{hint} (failed for head_dim={head_dim}, "
                                                                       f"position={position})")
    return verdict("chapter 7: RoPE by hand", fn, True, hint=hint,
                   success="correct: your rotation matches slmbook's RotaryEmbedding")
