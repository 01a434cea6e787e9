"""Chapter 13's exercises: what a mixture of experts costs per token, and what a capacity limit drops."""

from __future__ import annotations

import torch

from slmbook.config import TINY
from slmbook.exercises import Result, verdict
from slmbook.moe import capacity_mask, parameter_counts

# Exercise 1's model: the tiny Qwen with 8 experts per layer, 2 chosen per token, each expert a
# SwiGLU of hidden size 96, and one shared expert.
EXERCISE_CONFIG = TINY.replace(n_experts=8, n_experts_per_token=2, moe_hidden_dim=96, n_shared_experts=1)

# Exercise 2's routing: the top-2 experts chosen by 6 tokens (best first), 3 experts, capacity 3.
CHOICES = ((0, 1), (0, 2), (1, 0), (0, 1), (0, 2), (2, 1))
CAPACITY = 3


def check_active_parameters(answer) -> Result:
    """Exercise 1: parameters one token uses in EXERCISE_CONFIG (k routed + shared experts, the
    router, attention, norms and the tied embedding)."""
    ok = answer is not None and answer == parameter_counts(EXERCISE_CONFIG)["active"]
    return verdict("chapter 13: active parameters", answer, ok,
                   hint="start from the total and remove, in every layer, the experts a token does not use: "
                        "(n_experts - k) * 3 * dim * moe_hidden_dim")


def dropped_assignments() -> int:
    kept = capacity_mask(torch.tensor(CHOICES), n_experts=3, capacity=CAPACITY)
    return int((~kept).sum())


def check_dropped(answer) -> Result:
    """Exercise 2: how many (token, expert) assignments of CHOICES does a capacity of 3 drop?"""
    return verdict("chapter 13: dropped by the capacity limit", answer, answer == dropped_assignments(),
                   hint="serve every token's first choice (in token order) before any second choice; an "
                        "expert that already has 3 assignments refuses the rest")
