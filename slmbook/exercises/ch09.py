"""Chapter 9's exercises: KV-cache memory at Qwen3-0.6B's and at our model's scale."""

from __future__ import annotations

from slmbook.config import BOOK, QWEN3_0_6B
from slmbook.exercises import Result, exact_int, verdict
from slmbook.kv_cache import config_kv_cache_bytes


def check_qwen3_cache_bytes(answer) -> Result:
    """Bytes of Qwen3-0.6B's KV cache (bfloat16) for a batch of 4 sequences of 8,192 tokens each."""
    expected = config_kv_cache_bytes(QWEN3_0_6B, 8192, batch_size=4)
    return verdict("chapter 9: Qwen3-0.6B cache bytes", answer,
                   ok=exact_int(answer, expected),
                   hint="2 (k and v) x layers x kv heads x head_dim x tokens x batch x 2 bytes; read the "
                        "sizes from slmbook.config.QWEN3_0_6B (it has 8 KV heads of 128 channels)",
                   success=f"correct: {expected / 2**30:.1f} GiB, more than the model's own bfloat16 weights "
                           f"(about 1.1 GiB)")


def check_book_tokens_per_gib(answer) -> Result:
    """How many tokens of KV cache (batch 1, bfloat16) fit in 1 GiB (2**30 bytes) for the book's
    chapter-14 model, slmbook.config.BOOK? A whole number of tokens."""
    expected = 2**30 // config_kv_cache_bytes(BOOK, 1, dtype="bfloat16")
    return verdict("chapter 9: tokens per GiB", answer,
                   ok=exact_int(answer, expected),
                   hint="divide 2**30 by the bytes of one token: 2 x n_layers x n_kv_heads x head_dim x 2",
                   success=f"correct: {expected:,} tokens")
