"""Chapter 11's exercises: count a Qwen model's parameters, and know its loss before training."""

from __future__ import annotations

import math

from slmbook.config import QwenConfig
from slmbook.exercises import Result, exact_int, verdict

# The model of the first exercise: small enough to count by hand.
EXERCISE_CONFIG = QwenConfig(vocab_size=1000, context_length=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             hidden_dim=192, tie_embeddings=True)


def check_parameter_count(answer, config: QwenConfig = EXERCISE_CONFIG) -> Result:
    """How many trainable parameters has QwenModel(config)? (Checked against the built model.)"""
    from slmbook.qwen import QwenModel

    expected = QwenModel(config).num_parameters()
    return verdict(
        "chapter 11: parameters of a small Qwen", answer,
        ok=exact_int(answer, expected),
        hint="embedding vocab x dim (tied: the head adds nothing); per layer q_proj dim x (n_heads*head_dim), "
             "k_proj and v_proj dim x (n_kv_heads*head_dim), o_proj (n_heads*head_dim) x dim, q_norm and k_norm "
             "head_dim each, SwiGLU 3 x dim x hidden_dim, two RMSNorms of dim; plus the final norm (dim)",
        success=f"correct: {expected:,} parameters")


def check_initial_loss(answer, vocab_size: int = 50257) -> Result:
    """What cross-entropy (nats per token) should an untrained model with GPT-2's vocabulary have?"""
    expected = math.log(vocab_size)
    ok = isinstance(answer, (int, float)) and not isinstance(answer, bool) and abs(answer - expected) < 0.01
    return verdict(
        "chapter 11: loss at initialisation", answer, ok=ok,
        hint="an untrained model spreads its probability evenly over the vocabulary: p = 1 / vocab_size for the "
             "right token, and the loss is -ln p",
        success=f"correct: ln({vocab_size:,}) = {expected:.3f} nats per token")
