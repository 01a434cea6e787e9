"""Chapter 9's exercises: a model's KV-cache size read from its config.json, and tokens per GiB for ours.

The first is checked on model configs made up afresh by the checker (as on the Hugging Face hub: some
give `head_dim`, some leave it to hidden_size / num_attention_heads, older ones omit
`num_key_value_heads`, which then means multi-head attention), so no number on screen answers it.
"""

from __future__ import annotations

import random

from slmbook.config import BOOK
from slmbook.exercises import Result, exact_int, not_attempted, verdict
from slmbook.kv_cache import config_kv_cache_bytes, kv_cache_bytes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def random_hf_config(rng: random.Random) -> dict:
    """A transformers-style config.json of a made-up Qwen3-like model (every field a real one has)."""
    head_dim = rng.choice([32, 64, 80, 128, 256])
    n_heads = rng.choice([4, 8, 12, 16, 32, 40, 64])
    n_kv_heads = rng.choice([k for k in (1, 2, 4, 8, n_heads) if n_heads % k == 0])
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": rng.choice([4096, 32000, 151936]), "hidden_size": n_heads * head_dim,
        "intermediate_size": rng.choice([3, 4]) * n_heads * head_dim, "num_hidden_layers": rng.randint(2, 64),
        "num_attention_heads": n_heads, "max_position_embeddings": rng.choice([2048, 8192, 40960]),
        "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "tie_word_embeddings": rng.random() < 0.5,
        "torch_dtype": rng.choice(sorted(DTYPE_BYTES)),
    }
    if rng.random() < 0.7 or n_kv_heads != n_heads:  # older configs omit it and mean multi-head attention
        config["num_key_value_heads"] = n_kv_heads
    if rng.random() < 0.5:
        config["head_dim"] = head_dim
    return config


def hf_cache_bytes(config: dict, tokens: int, batch_size: int, query_heads: bool = False) -> int:
    """The checker's reference (with `query_heads=True`: the classic slip, for its hint)."""
    n_heads = config["num_attention_heads"]
    n_kv = n_heads if query_heads else config.get("num_key_value_heads") or n_heads
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    return kv_cache_bytes(config["num_hidden_layers"], n_kv, head_dim, tokens, batch_size, config["torch_dtype"])


def check_cache_bytes_from_config(fn) -> Result:
    """Write fn(config, tokens, batch_size) -> the bytes of the KV cache of `batch_size` sequences of
    `tokens` tokens, stored in the model's own dtype, for `config`, a model's config.json as a dict."""
    name = "chapter 9: KV-cache bytes from a config.json"
    if fn is None:
        return not_attempted(name)
    rng = random.Random(9)
    for _ in range(12):
        config = random_hf_config(rng)
        tokens, batch_size = rng.choice([1, 100, 4096, 32768]), rng.choice([1, 3, 8])
        expected = hf_cache_bytes(config, tokens, batch_size)
        try:
            got = fn(dict(config), tokens, batch_size)
        except Exception as error:  # the reader's code: report it, never crash the notebook
            return Result(name, "wrong", f"your function raised {type(error).__name__}: {error!r} for a config "
                                         f"with keys {sorted(config)}")
        if exact_int(got, expected):
            continue
        hint = ("2 (keys and values) x num_hidden_layers x key/value heads x head_dim x tokens x batch x bytes per "
                "number of torch_dtype; head_dim, when absent, is hidden_size / num_attention_heads")
        if not isinstance(got, int) or isinstance(got, bool):
            hint = f"return a Python int (you returned {type(got).__name__}). " + hint
        elif got == hf_cache_bytes(config, tokens, batch_size, query_heads=True) != expected:
            hint = "only the key/value heads are cached (num_key_value_heads), not the query heads. " + hint
        elif got * 2 == expected:
            hint = "both keys and values are stored. " + hint
        elif "num_key_value_heads" not in config:
            hint = "a config without num_key_value_heads has one key/value head per query head (MHA). " + hint
        return verdict(name, fn, False, hint=f"{hint} (wrong for {config['num_hidden_layers']} layers, "
                                             f"{tokens} tokens, batch {batch_size}, {config['torch_dtype']})")
    return verdict(name, fn, True, hint="", success="correct on 12 model configs you had never seen")


def check_book_tokens_per_gib(answer) -> Result:
    """How many tokens of KV cache (batch 1, bfloat16) fit in 1 GiB (2**30 bytes) for the book's
    chapter-14 model, slmbook.config.BOOK? A whole number of tokens."""
    name = "chapter 9: tokens per GiB"
    if answer is None:
        return not_attempted(name)
    expected = 2**30 // config_kv_cache_bytes(BOOK, 1, dtype="bfloat16")
    return verdict(name, answer,
                   ok=exact_int(answer, expected),
                   hint="divide 2**30 by the bytes of one token: 2 x n_layers x n_kv_heads x head_dim x 2, and "
                        "round down to whole tokens",
                   success=f"correct: {expected:,} tokens")
