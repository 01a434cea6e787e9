"""Scaling laws: how loss falls with parameters N and training tokens D, and how to split compute (chapter 4).

Training compute is C ≈ 6·N·D FLOPs (2 per parameter per token forward, 4 backward).

- Kaplan et al. 2020 ("Scaling Laws for Neural Language Models"): L(N) = (N_c/N)^α_N,
  L(D) = (D_c/D)^α_D and L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D, with N counting non-embedding
  parameters and L in nats per token on their WebText2 tokenizer. Their compute-optimal recipe grows
  the model much faster than the data (N_opt ∝ C^0.73).
- Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", Chinchilla), approach 3:
  L(N, D) = E + A/N^α + B/D^β with E=1.69, A=406.4, B=410.7, α=0.34, β=0.28 (MassiveText).
  Minimising it at fixed C = 6ND gives N_opt = G·(C/6)^a, D_opt = (C/6)^b / G with a = β/(α+β),
  b = α/(α+β), G = (αA/(βB))^(1/(α+β)). The paper's rule of thumb: about 20 tokens per parameter.

The constants were fitted on much larger models and other data: for a TinyStories model they give
the shape of the trade-off, not its loss.

`exact_match` is the other side of "emergent abilities" (Schaeffer et al. 2023): a score that needs
every one of k tokens right turns a smoothly improving per-token accuracy into a sudden-looking jump.
"""

from __future__ import annotations

import math

import numpy as np

from slmbook.config import QwenConfig
from slmbook.memory import parameter_counts

# Kaplan et al. 2020, table 5 / equations 1.1-1.5
KAPLAN = {"N_c": 8.8e13, "alpha_N": 0.076, "D_c": 5.4e13, "alpha_D": 0.095}
# Hoffmann et al. 2022, equation 10 (approach 3, parametric fit)
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TOKENS_PER_PARAMETER = 20  # Chinchilla's rule of thumb (paper's table 3: ~20 tokens per parameter)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name}={value!r}: must be a positive finite number")
    return float(value)


def training_flops(n_params: float, n_tokens: float) -> float:
    """C ≈ 6·N·D: FLOPs to train N parameters on D tokens."""
    return 6.0 * _positive("n_params", n_params) * _positive("n_tokens", n_tokens)


def kaplan_loss(n_params: float | None = None, n_tokens: float | None = None) -> float:
    """Kaplan's L(N), L(D) or L(N, D) (nats/token), whichever arguments are given.

    N counts non-embedding parameters (Kaplan's convention).
    """
    k = KAPLAN
    if n_params is None and n_tokens is None:
        raise ValueError("kaplan_loss needs n_params, n_tokens or both")
    if n_tokens is None:
        return (k["N_c"] / _positive("n_params", n_params)) ** k["alpha_N"]
    if n_params is None:
        return (k["D_c"] / _positive("n_tokens", n_tokens)) ** k["alpha_D"]
    n, d = _positive("n_params", n_params), _positive("n_tokens", n_tokens)
    return ((k["N_c"] / n) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / d) ** k["alpha_D"]


def chinchilla_loss(n_params: float, n_tokens: float) -> float:
    """Chinchilla's L(N, D) = E + A/N^α + B/D^β (nats/token on MassiveText)."""
    c = CHINCHILLA
    n, d = _positive("n_params", n_params), _positive("n_tokens", n_tokens)
    return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]


def _chinchilla_exponents() -> tuple[float, float, float]:
    c = CHINCHILLA
    a = c["beta"] / (c["alpha"] + c["beta"])
    b = c["alpha"] / (c["alpha"] + c["beta"])
    g = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1 / (c["alpha"] + c["beta"]))
    return a, b, g


def chinchilla_optimal(compute_flops: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising Chinchilla's L(N, D) for a budget C = 6·N·D."""
    a, b, g = _chinchilla_exponents()
    c6 = _positive("compute_flops", compute_flops) / 6
    return g * c6**a, c6**b / g


def compute_optimal_tokens(n_params: float, rule: str = "rule-of-thumb") -> float:
    """How many training tokens a model of `n_params` parameters should see to be compute-optimal.

    rule='rule-of-thumb': 20 tokens per parameter. rule='fit': the budget C for which N is
    Chinchilla-optimal, then D = C / (6N) (from the parametric fit; at small N it asks for fewer).
    """
    n = _positive("n_params", n_params)
    if rule == "rule-of-thumb":
        return TOKENS_PER_PARAMETER * n
    if rule == "fit":
        a, b, g = _chinchilla_exponents()
        c6 = (n / g) ** (1 / a)  # invert N_opt = G (C/6)^a
        return c6**b / g
    raise ValueError(f"rule={rule!r}: allowed 'rule-of-thumb' or 'fit'")


def kaplan_optimal_params(compute_flops: float) -> float:
    """Kaplan's compute-optimal model size N_opt ≈ 1.3e9 · (C in PF-days)^0.73 (their eq. 6.1 fit)."""
    pf_days = _positive("compute_flops", compute_flops) / (1e15 * 86400)
    return 1.3e9 * pf_days**0.73


def count_parameters(config: QwenConfig, embeddings: bool = True) -> int:
    """Parameters of a Qwen3-style model with this config (`slmbook.memory.parameter_counts` by part).

    embeddings=False leaves out the token-embedding table, the N of Kaplan's law (the convention of
    `QwenModel.num_parameters(exclude_embeddings=True)`).
    """
    parts = parameter_counts(config)
    return sum(parts.values()) - (0 if embeddings else parts["embedding"])


def embedding_share(config: QwenConfig) -> float:
    """Fraction of the model's parameters in the embedding (and untied head): large for small models."""
    parts = parameter_counts(config)
    return (parts["embedding"] + parts["output head"]) / sum(parts.values())


def exact_match(per_token_accuracy, k: int):
    """P(all k tokens of an answer are right) = p**k when each is right with probability p on its own.

    The metric-choice caveat of emergent abilities: p rising smoothly with scale gives an exact-match
    score that stays near 0 and then shoots up, all the more the longer the answer (larger k).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r}: the answer length must be a positive integer")
    p = np.asarray(per_token_accuracy, dtype=float)
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"per_token_accuracy={per_token_accuracy!r}: probabilities must lie in [0, 1]")
    return p**k
