"""Chapter 3's exercises: a KV cache, the memory of AdamW training, and where attention overtakes
the weights in a token's FLOPs."""

from __future__ import annotations

from slmbook.config import BOOK, QWEN3_0_6B
from slmbook.exercises import Result, close, not_attempted, verdict
from slmbook.flops import forward_flops_breakdown
from slmbook.kv_cache import config_kv_cache_bytes
from slmbook.memory import parameter_count


def _verdict(exercise: str, answer, ok: bool, hint: str, success: str) -> Result:
    """`verdict`, except that the hint waits for a first wrong try."""
    if answer is None:
        return not_attempted(exercise)
    return verdict(exercise, answer, ok, hint=hint, success=success)


def check_kv_cache_bytes(answer) -> Result:
    """How many bytes does Qwen3-0.6B's KV cache take for one sequence of 32,768 tokens in bfloat16?
    (exact, or within 0.1%)"""
    expected = config_kv_cache_bytes(QWEN3_0_6B, 32_768, 1, "bfloat16")
    return _verdict("chapter 3: Qwen3-0.6B's KV cache", answer, close(answer, expected, rel=1e-3),
                    hint="keys and values (2) x n_layers x n_kv_heads x head_dim x tokens x 2 bytes; "
                         "the sizes are in slmbook.config.QWEN3_0_6B",
                    success=f"correct: {expected / 2**30:.2f} GiB, about three times the model's own "
                            "bfloat16 weights")


def check_adamw_static_bytes(answer) -> Result:
    """Training BOOK with AdamW in float32: how many bytes do the weights, their gradients and the
    optimizer's states take together (no activations)? Within 1%."""
    expected = 16 * parameter_count(BOOK)
    return _verdict("chapter 3: weights + gradients + AdamW states", answer, close(answer, expected, rel=0.01),
                    hint="per parameter: 4 bytes of weight, 4 of gradient, 4 + 4 for AdamW's two running "
                         "averages; count BOOK's parameters (tied head: the embedding counts once)",
                    success=f"correct: {expected / 2**20:.0f} MiB, 16 bytes per parameter")


def _crossover_length(config) -> float:
    """The sequence length T at which a token's attention scores (4 n_layers n_heads head_dim T
    forward FLOPs) cost as much as all its products with weights (2 x those weights, head included)."""
    per_position = forward_flops_breakdown(config, 1)["attention scores"]  # the score FLOPs grow as T
    weights = sum(v for k, v in forward_flops_breakdown(config, 1).items() if k != "attention scores")
    return weights / per_position


def check_attention_crossover(answer) -> Result:
    """From which sequence length would the attention scores of BOOK cost as many FLOPs per token as
    all its products with weights (projections, feed-forward, output head) together? Within 1%."""
    expected = _crossover_length(BOOK)
    return _verdict("chapter 3: where attention overtakes the weights", answer, close(answer, expected, rel=0.01),
                    hint="per token, the weight products cost 2 x (weights in products, the head included "
                         "even when tied) and the scores with the mix of values 4 x n_layers x n_heads x "
                         "head_dim x T; set them equal and solve for T",
                    success=f"correct: about {expected:,.0f} tokens, {expected / BOOK.context_length:.0f} x "
                            f"BOOK's context of {BOOK.context_length}: at 512 tokens the weights dominate")
