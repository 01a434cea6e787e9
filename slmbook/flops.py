"""How many floating-point operations a Qwen-style model does per token (chapter 3; MFU in chapter 14).

Only matrix products are counted: they are more than 99% of the work in a transformer and they
are what a GPU's tensor cores (and its peak FLOP/s figure) are for. A product of an (m, k) by a
(k, n) matrix is m*n*k multiply-adds = 2*m*n*k FLOPs.

Per token, at sequence length T, the forward pass does
- the projections: 2 * (weights of q, k, v, o in every layer),
- the attention scores q.k and the weighted sum of values: 2 * 2 * n_heads * head_dim * T per layer
  (the full T x T matrix, as the PaLM paper's MFU convention and `torch.utils.flop_counter` count
  it; a causal kernel can skip about half of it, see `causal=True`),
- the SwiGLU feed-forward: 2 * 3 * dim * hidden_dim per layer,
- the output head: 2 * dim * vocab_size (computed even when its weights are tied to the embedding;
  the embedding lookup itself is a copy, not a product).

The backward pass does two products for each forward one (gradient for the input, gradient for the
weight), so a training step costs 3x the forward: the classic 6N FLOPs per token plus the attention
term 12 * n_layers * n_heads * head_dim * T. Activation recomputation would add work on top; these
are *model* FLOPs, the numerator of model FLOPs utilisation (MFU), which by definition leaves it out.
Its denominator, a known GPU's published peak FLOP/s in the precision a run trains in, is
`default_peak_flops`.
"""

from __future__ import annotations

import torch

from slmbook.config import QwenConfig, positive_int
from slmbook.hardware import known_peak


def _check(config: QwenConfig, seq_len: int) -> None:
    if not isinstance(config, QwenConfig):
        raise TypeError(f"config={config!r}: expected a slmbook.config.QwenConfig")
    positive_int("seq_len", seq_len)
    if seq_len > config.context_length:
        raise ValueError(f"seq_len={seq_len} is longer than config.context_length={config.context_length}")


def forward_flops_breakdown(config: QwenConfig, seq_len: int, causal: bool = False) -> dict[str, int]:
    """Forward FLOPs per token, by part of the model, averaged over a sequence of `seq_len` tokens.

    With causal=True the attention term counts only the keys a token may see (on average
    (T + 1) / 2 of them) instead of all T.
    """
    _check(config, seq_len)
    c = config
    q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    keys_seen = (seq_len + 1) / 2 if causal else seq_len
    return {
        "attention projections": c.n_layers * 2 * (c.dim * q_width + 2 * c.dim * kv_width + q_width * c.dim),
        "attention scores": round(c.n_layers * 2 * 2 * c.n_heads * c.head_dim * keys_seen),
        "feed-forward": c.n_layers * 2 * 3 * c.dim * c.hidden_dim,
        "output head": 2 * c.dim * c.vocab_size,
    }


def forward_flops_per_token(config: QwenConfig, seq_len: int, causal: bool = False) -> int:
    """FLOPs of one forward pass, per token, at sequence length `seq_len`."""
    return sum(forward_flops_breakdown(config, seq_len, causal).values())


def backward_flops_per_token(config: QwenConfig, seq_len: int, causal: bool = False) -> int:
    """The backward pass: two products (input gradient, weight gradient) per forward product."""
    return 2 * forward_flops_per_token(config, seq_len, causal)


def training_flops_per_token(config: QwenConfig, seq_len: int, causal: bool = False) -> int:
    """Model FLOPs of one training step per token: forward + backward = 3x forward.

    Multiply by tokens per second and divide by the device's peak FLOP/s to get MFU.
    """
    return forward_flops_per_token(config, seq_len, causal) + backward_flops_per_token(config, seq_len, causal)


def six_n_approximation(config: QwenConfig) -> int:
    """The rule of thumb 6 * N, N = the parameters that take part in a product (head included):
    `training_flops_per_token` without the attention-score term."""
    parts = forward_flops_breakdown(config, 1)
    return 3 * (sum(parts.values()) - parts["attention scores"])


def _check_peak_flops(peak_flops: float) -> None:
    if not peak_flops > 0:
        raise ValueError(f"peak_flops={peak_flops!r}: must be > 0 (FLOP/s, e.g. 989e12 for an H100 SXM in bf16)")


def training_seconds(tokens: float, config: QwenConfig, seq_len: int, peak_flops: float, mfu: float = 0.4) -> float:
    """Seconds to train on `tokens` tokens at a given MFU of `peak_flops` (FLOP/s): the inverse of
    `mfu`. 40% is a realistic rate for a well-tuned small model on a GPU."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu!r}: must be in (0, 1]")
    _check_peak_flops(peak_flops)
    return tokens * training_flops_per_token(config, seq_len) / (mfu * peak_flops)


def mfu(tokens_per_second: float, config: QwenConfig, seq_len: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: the fraction of the device's peak FLOP/s that training used."""
    if not tokens_per_second >= 0:
        raise ValueError(f"tokens_per_second={tokens_per_second!r}: must be >= 0")
    _check_peak_flops(peak_flops)
    return tokens_per_second * training_flops_per_token(config, seq_len) / peak_flops


def default_peak_flops(device: torch.device, amp_dtype) -> float | None:
    """The published dense peak (FLOP/s) of a known GPU for the precision in use; None on a CPU."""
    if device.type != "cuda":
        return None
    peak = known_peak(torch.cuda.get_device_name(device))
    if peak is None:
        return None
    key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "tf32")
    return peak.tflops.get(key, 0) * 1e12 or None
