"""Chapter 8's exercise: causal attention weights written by hand."""

from __future__ import annotations

import torch

from slmbook.attention import scaled_dot_product_attention
from slmbook.exercises import Result, not_attempted, verdict


def check_attention_weights(fn) -> Result:
    """Write fn(q, k) -> causal attention weights (T, T) for one head, q and k of shape (T, d):
    softmax of the scaled scores with the future masked. Checked against slmbook.attention."""
    name = "chapter 8: attention weights by hand"
    hint = "scores = q @ k.T / sqrt(d); set scores above the diagonal to -inf; softmax over the last dim"
    if fn is None:
        return not_attempted(name)
    generator = torch.Generator().manual_seed(8)
    for tokens, d in ((3, 2), (6, 8), (11, 64)):
        q = torch.randn(tokens, d, generator=generator, dtype=torch.float64)
        k = torch.randn(tokens, d, generator=generator, dtype=torch.float64)
        _, expected = scaled_dot_product_attention(q[None, None], k[None, None], k[None, None], impl="manual",
                                                   return_weights=True)
        try:
            got = torch.as_tensor(fn(q.clone(), k.clone()), dtype=torch.float64)
        except Exception as error:
            return Result(name, "wrong", f"your function raised {type(error).__name__}: {error}")
        if got.shape != (tokens, tokens) or not torch.allclose(got, expected[0, 0], atol=1e-6):
            return verdict(name, fn, False, hint=f"{hint} (failed for {tokens} tokens, d={d})")
    return verdict(name, fn, True, hint=hint, success="correct: your weights match slmbook's attention")
