"""How good is a language model: cross-entropy, perplexity and bits per byte (chapters 5 and 6).

- cross-entropy: the average of -ln p(true next token), in nats per token.
- perplexity: exp(cross-entropy), "as unsure as a uniform choice among this many tokens".
- bits per byte: total nats / (ln 2 * total UTF-8 bytes of the text). Per-token numbers depend on
  how long the tokens are; bits per byte does not, so it is the fair way to compare models that use
  different tokenizers (a char model and a BPE model predict the same bytes).
"""

from __future__ import annotations

import math

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-log softmax(logits)[target], written out: logsumexp(logits) - logits[target] (nats).

    logits: (..., vocab) scores; targets: (...) integer ids. reduction: 'mean', 'sum' or 'none'.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {type(logits).__name__}"
                        f"{'' if not isinstance(logits, torch.Tensor) else ' of dtype ' + str(logits.dtype)}")
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        raise TypeError("targets must be an integer tensor of token ids")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} needs targets of shape {tuple(logits.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[-1]):
        raise ValueError(f"targets must be ids in 0..{logits.shape[-1] - 1}, got {targets.min().item()}..{targets.max().item()}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}: allowed 'mean', 'sum', 'none'")
    logits = logits.float()
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else nll.mean()


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood in nats per token)."""
    mean_nll = float(mean_nll)
    if not mean_nll >= 0:
        raise ValueError(f"mean_nll={mean_nll!r}: a negative log-likelihood is >= 0 (in nats)")
    return math.exp(mean_nll)


def utf8_bytes(text: str) -> int:
    """Bytes of `text` in UTF-8: what every tokenizer must reproduce."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return len(text.encode("utf-8"))


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """total nats / (ln 2 * total bytes): bits needed per byte of text under the model."""
    total_nats = float(total_nats)
    if not total_nats >= 0:
        raise ValueError(f"total_nats={total_nats!r}: must be >= 0")
    if not isinstance(total_bytes, int) or total_bytes <= 0:
        raise ValueError(f"total_bytes={total_bytes!r}: must be a positive integer")
    return total_nats / (math.log(2) * total_bytes)


def bits_per_token(mean_nll: float) -> float:
    """Mean negative log-likelihood converted from nats to bits."""
    return float(mean_nll) / math.log(2)
