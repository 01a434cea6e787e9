"""Chapter 11's exercises: count a Qwen model's parameters from its shape, and write the next-token loss.

Both ask for a function and check it on inputs the notebook never shows (configurations it never
builds, random logits), against the real thing: the built model's tensors and `F.cross_entropy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmbook.config import QwenConfig
from slmbook.exercises import Result, exact_int, not_attempted, verdict

# Shapes the notebook never builds: tied and untied heads, MHA / GQA / MQA, head_dim != dim // n_heads.
EXERCISE_CONFIGS = (
    QwenConfig(vocab_size=1000, context_length=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=192),
    QwenConfig(vocab_size=777, context_length=64, dim=48, n_layers=3, n_heads=6, n_kv_heads=6, hidden_dim=100,
               tie_embeddings=False),
    QwenConfig(vocab_size=300, context_length=64, dim=32, n_layers=1, n_heads=8, n_kv_heads=1, head_dim=6,
               hidden_dim=80),
    QwenConfig(vocab_size=2048, context_length=64, dim=40, n_layers=5, n_heads=4, n_kv_heads=2, head_dim=16,
               hidden_dim=96, tie_embeddings=False),
)

COUNT_HINT = ("embedding vocab x dim (a tied head is that same matrix: it adds nothing; an untied one adds "
              "another vocab x dim); per layer q_proj dim x (n_heads*head_dim), k_proj and v_proj "
              "dim x (n_kv_heads*head_dim) each, o_proj (n_heads*head_dim) x dim, q_norm and k_norm head_dim "
              "each, SwiGLU 3 x dim x hidden_dim, two RMSNorms of dim; plus the final norm (dim). Use "
              "config.head_dim: it need not be dim // n_heads")


def _describe(c: QwenConfig) -> str:
    return (f"QwenConfig(vocab_size={c.vocab_size}, dim={c.dim}, n_layers={c.n_layers}, n_heads={c.n_heads}, "
            f"n_kv_heads={c.n_kv_heads}, head_dim={c.head_dim}, hidden_dim={c.hidden_dim}, "
            f"tie_embeddings={c.tie_embeddings})")


def check_parameter_count(fn, configs=EXERCISE_CONFIGS) -> Result:
    """Write fn(config) -> the trainable parameters of QwenModel(config) (an int). Checked on `configs`
    against the built model, counting its tensors (a tied matrix once)."""
    from slmbook.qwen import QwenModel

    name = "chapter 11: parameters from a config"
    if fn is None:
        return not_attempted(name)
    if not callable(fn):
        return Result(name, "wrong", f"expected a function config -> int, got {type(fn).__name__} {fn!r}")
    for config in configs:
        expected = QwenModel(config).num_parameters()
        try:
            got = fn(config)
        except Exception as error:
            return Result(name, "wrong", f"your function raised {type(error).__name__}: {error} for "
                                         f"{_describe(config)}")
        if got is None:
            return not_attempted(name)
        if not exact_int(got, expected):
            return verdict(name, fn, False, hint=f"for {_describe(config)} your function gave {got!r}, the built "
                                                 f"model has {expected:,}. {COUNT_HINT}")
    return verdict(name, fn, True, hint=COUNT_HINT,
                   success=f"correct: your counts match the built models of all {len(configs)} configurations")


LOSS_HINT = ("position t predicts token t + 1: compare logits[:-1] with ids[1:] (T - 1 predictions); the loss "
             "of one prediction is -log_softmax(logits)[true id], in nats (natural log); average them")


def check_next_token_loss(fn) -> Result:
    """Write fn(logits (T, vocab), ids (T,)) -> mean cross-entropy, in nats, of predicting ids[t + 1] from
    logits[t]. Checked on random logits against F.cross_entropy."""
    name = "chapter 11: the next-token loss"
    if fn is None:
        return not_attempted(name)
    if not callable(fn):
        return Result(name, "wrong", f"expected a function (logits, ids) -> loss, got {type(fn).__name__} {fn!r}")
    generator = torch.Generator().manual_seed(11)
    for tokens, vocab, scale in ((2, 3, 1.0), (7, 50, 3.0), (33, 1000, 10.0)):
        logits = torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * scale
        ids = torch.randint(vocab, (tokens,), generator=generator)
        expected = F.cross_entropy(logits[:-1], ids[1:]).item()
        try:
            got = fn(logits.clone(), ids.clone())
        except Exception as error:
            return Result(name, "wrong", f"your function raised {type(error).__name__}: {error}")
        if got is None:
            return not_attempted(name)
        try:
            value = float(torch.as_tensor(got).double())  # a number or a one-element tensor
        except (TypeError, ValueError, RuntimeError):
            return Result(name, "wrong", f"expected a number or a 0-dimensional tensor, got {type(got).__name__}")
        if not abs(value - expected) <= 1e-6 * max(1.0, abs(expected)):
            return verdict(name, fn, False, hint=f"{LOSS_HINT} (failed for {tokens} tokens, vocabulary {vocab})")
    return verdict(name, fn, True, hint=LOSS_HINT, success="correct: your loss matches F.cross_entropy on random logits")
