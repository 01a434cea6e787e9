"""Chapter 13's exercises: what a model with dense and MoE layers holds and uses, and what a capacity
limit drops.

Exercise 1's model mixes dense and MoE layers, as DeepSeek-V3 does (its first three layers are dense),
which no single `QwenConfig` describes: no call of `slmbook.moe.parameter_counts` gives the answer, and
the chapter prints no count of it. A hint appears only after a wrong try.
"""

from __future__ import annotations

import torch

from slmbook.config import TINY
from slmbook.exercises import Result, exact_int, not_attempted, verdict
from slmbook.moe import capacity_mask

# Exercise 1: the tiny Qwen's shape with 6 layers on the book's 4,096-token tokenizer; layers 0 and 1 keep
# the dense SwiGLU feed-forward, layers 2 to 5 are MoE layers with one shared expert and the top 2 of 16
# routed experts of hidden size 48.
LAYERS, DENSE_LAYERS = 6, 2
DENSE_CONFIG = TINY.replace(vocab_size=4096, n_layers=LAYERS)
MOE_CONFIG = DENSE_CONFIG.replace(n_experts=16, n_experts_per_token=2, moe_hidden_dim=48, n_shared_experts=1)

# Exercise 2's routing: the top-2 experts chosen by 6 tokens (best first), 3 experts, capacity 3.
CHOICES = ((0, 1), (0, 2), (1, 0), (0, 1), (0, 2), (2, 1))
CAPACITY = 3


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mixed_model_counts() -> tuple[int, int]:
    """(total, active) parameters of exercise 1's model, counted on built modules: the embedding and
    final norm once, two dense blocks, four MoE blocks; a token skips 14 routed experts in each MoE block."""
    from slmbook.qwen import QwenModel

    dense, sparse = QwenModel(DENSE_CONFIG.replace(n_layers=1)), QwenModel(MOE_CONFIG.replace(n_layers=1))
    shared = _numel(dense.embed_tokens) + _numel(dense.norm)  # the head is tied to the embedding
    moe_layers = LAYERS - DENSE_LAYERS
    total = shared + DENSE_LAYERS * _numel(dense.layers[0]) + moe_layers * _numel(sparse.layers[0])
    skipped = (MOE_CONFIG.n_experts - MOE_CONFIG.n_experts_per_token) * _numel(sparse.layers[0].mlp.experts[0])
    return total, total - moe_layers * skipped


def check_mixed_model(answer) -> Result:
    """Exercise 1: [total, active] parameters of the model with dense layers 0-1 and MoE layers 2-5."""
    name = "chapter 13: a model with dense and MoE layers"
    if answer is None:
        return not_attempted(name)
    total, active = mixed_model_counts()
    pair = list(answer) if isinstance(answer, (list, tuple)) else None
    ok = pair is not None and len(pair) == 2 and exact_int(pair[0], total) and exact_int(pair[1], active)
    if pair is not None and len(pair) == 2 and not ok:
        if exact_int(pair[0], total):
            return Result(name, "wrong", "the total is right; for the active count, remove in each MoE layer the "
                                         "routed experts a token does not visit (each is 3 * dim * 48 weights)")
        if exact_int(pair[1], total):
            return Result(name, "wrong", "the second number is the total: a token uses only 2 of the 16 routed experts")
    return verdict(name, answer, ok,
                   hint="count the pieces once each: embedding (tied head) and final norm; a dense block "
                        "(slmbook.moe.parameter_counts of a dense config, or QwenModel(...).layers[0]); an MoE block "
                        "(its router, 16 routed experts and the shared one); then 2 dense + 4 MoE blocks",
                   success=f"correct: {total:,} parameters held, {active:,} used per token")


def dropped_assignments() -> int:
    kept = capacity_mask(torch.tensor(CHOICES), n_experts=3, capacity=CAPACITY)
    return int((~kept).sum())


def check_dropped(answer) -> Result:
    """Exercise 2: how many (token, expert) assignments of CHOICES does a capacity of 3 drop?"""
    name = "chapter 13: dropped by the capacity limit"
    if answer is None:
        return not_attempted(name)
    return verdict(name, answer, exact_int(answer, dropped_assignments()),
                   hint="serve every token's first choice (in token order) before any second choice; an "
                        "expert that already has 3 assignments refuses the rest")
