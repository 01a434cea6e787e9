"""Chapter 3's exercises: a KV cache, the memory of AdamW training, and the FLOPs of a token."""

from __future__ import annotations

from slmbook.config import BOOK, QWEN3_0_6B
from slmbook.exercises import Result, close, verdict
from slmbook.flops import training_flops_per_token
from slmbook.kv_cache import config_kv_cache_bytes
from slmbook.memory import parameter_count


def check_kv_cache_bytes(answer) -> Result:
    """How many bytes does Qwen3-0.6B's KV cache take for one sequence of 32,768 tokens in bfloat16?
    (exact, or within 0.1%)"""
    expected = config_kv_cache_bytes(QWEN3_0_6B, 32_768, 1, "bfloat16")
    return verdict("chapter 3: Qwen3-0.6B's KV cache", answer, close(answer, expected, rel=1e-3),
                   hint="keys and values (2) x n_layers x n_kv_heads x head_dim x tokens x 2 bytes; "
                        "the sizes are in slmbook.config.QWEN3_0_6B",
                   success=f"correct: {expected / 2**30:.2f} GiB, about three times the model's own "
                           "bfloat16 weights")


def check_adamw_static_bytes(answer) -> Result:
    """Training BOOK with AdamW in float32: how many bytes do the weights, their gradients and the
    optimizer's states take together (no activations)? Within 1%."""
    expected = 16 * parameter_count(BOOK)
    return verdict("chapter 3: weights + gradients + AdamW states", answer, close(answer, expected, rel=0.01),
                   hint="per parameter: 4 bytes of weight, 4 of gradient, 4 + 4 for AdamW's two running "
                        "averages; count BOOK's parameters (tied head: the embedding counts once)",
                   success=f"correct: {expected / 2**20:.0f} MiB, 16 bytes per parameter")


def check_training_flops(answer) -> Result:
    """How many FLOPs does one training step spend per token on BOOK at seq_len = 512 (matrix products
    only, forward + backward, attention scores and the output head included)? Within 1%."""
    expected = training_flops_per_token(BOOK, 512)
    return verdict("chapter 3: training FLOPs per token", answer, close(answer, expected, rel=0.01),
                   hint="3 x forward; forward = 2 x (weights in products, the head included even when tied) "
                        "+ 4 x n_layers x n_heads x head_dim x seq_len for the scores and the mix of values",
                   success=f"correct: {expected / 1e6:.0f} MFLOP per token")
