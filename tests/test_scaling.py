"""Scaling-law formulas against the papers' values and brute-force minimisation; parameter counts
against `transformers`' Qwen3."""

import math

import numpy as np
import pytest
import torch

from slmbook.config import BOOK, QWEN3_0_6B, TINY, QwenConfig
from slmbook.memory import parameter_counts
from slmbook.qwen import QwenModel
from slmbook.scaling import (
    chinchilla_loss,
    chinchilla_optimal,
    compute_optimal_tokens,
    count_parameters,
    embedding_share,
    exact_match,
    kaplan_loss,
    kaplan_optimal_params,
    training_flops,
)


def hf_qwen3_parameters(config: QwenConfig) -> int:
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen3Config(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim,
        tie_word_embeddings=config.tie_embeddings,
    )
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(hf)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", [TINY, BOOK, QWEN3_0_6B, TINY.replace(tie_embeddings=False, n_kv_heads=1)])
def test_parameter_count_matches_transformers_qwen3(config):
    assert count_parameters(config) == hf_qwen3_parameters(config)
    assert count_parameters(config, embeddings=False) == count_parameters(config) - config.vocab_size * config.dim


def test_qwen3_0_6b_is_the_advertised_size():
    # Qwen3-0.6B's model card: 0.6B parameters, 0.44B of them non-embedding
    assert count_parameters(QWEN3_0_6B) / 1e9 == pytest.approx(0.6, abs=0.005)
    assert count_parameters(QWEN3_0_6B, embeddings=False) / 1e9 == pytest.approx(0.44, abs=0.005)


def test_embedding_share():
    parts = parameter_counts(TINY)
    assert embedding_share(TINY) == pytest.approx(parts["embedding"] / sum(parts.values()))
    assert embedding_share(TINY) > 0.9  # a 64-wide model with GPT-2's 50k vocabulary is mostly embedding
    assert embedding_share(QWEN3_0_6B) < embedding_share(BOOK) < embedding_share(TINY)
    # untied: the output head is a second vocabulary x dim matrix, counted from a real model
    untied = TINY.replace(tie_embeddings=False)
    with torch.device("meta"):
        model = QwenModel(untied)
    tables = model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    assert embedding_share(untied) == pytest.approx(tables / model.num_parameters())


def test_chinchilla_70b_on_1_4t_tokens():
    # the paper's compute: Chinchilla, 70B parameters on 1.4T tokens, about 5.88e23 FLOPs
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23)
    assert compute_optimal_tokens(70e9) == pytest.approx(1.4e12)


@pytest.mark.parametrize("compute", [1e18, 5.88e23, 1e25])
def test_chinchilla_optimum_is_the_minimum_along_the_budget(compute):
    n_opt, d_opt = chinchilla_optimal(compute)
    assert 6 * n_opt * d_opt == pytest.approx(compute)
    # brute force: the smallest loss over a fine grid of splits of the same budget
    ns = np.logspace(math.log10(n_opt) - 2, math.log10(n_opt) + 2, 40001)
    losses = [chinchilla_loss(n, compute / (6 * n)) for n in ns]
    assert ns[int(np.argmin(losses))] == pytest.approx(n_opt, rel=1e-3)


def test_chinchilla_scaling_exponents():
    # N_opt ∝ C^a with a = β/(α+β) ≈ 0.45, D_opt ∝ C^b with b = α/(α+β) ≈ 0.55 (the paper's table 2
    # gives 0.46 and 0.54 from the unrounded fit)
    n1, d1 = chinchilla_optimal(1e20)
    n2, d2 = chinchilla_optimal(1e22)
    assert math.log10(n2 / n1) / 2 == pytest.approx(0.28 / 0.62)
    assert math.log10(d2 / d1) / 2 == pytest.approx(0.34 / 0.62)


def test_tokens_from_the_fit_invert_the_optimum():
    for n in (1e6, 3.6e7, 7e10):
        d = compute_optimal_tokens(n, rule="fit")
        n_back, d_back = chinchilla_optimal(6 * n * d)
        assert n_back == pytest.approx(n) and d_back == pytest.approx(d)


def test_kaplan_formulas():
    k_nc, k_an, k_dc, k_ad = 8.8e13, 0.076, 5.4e13, 0.095
    assert kaplan_loss(n_params=1e9) == pytest.approx((k_nc / 1e9) ** k_an)
    assert kaplan_loss(n_tokens=1e10) == pytest.approx((k_dc / 1e10) ** k_ad)
    # with infinite data L(N, D) -> L(N); with a huge model -> L(D)
    assert kaplan_loss(1e9, 1e30) == pytest.approx(kaplan_loss(n_params=1e9), rel=1e-6)
    assert kaplan_loss(1e30, 1e10) == pytest.approx(kaplan_loss(n_tokens=1e10), rel=1e-6)
    # 1 PF-day -> 1.3e9 parameters
    assert kaplan_optimal_params(1e15 * 86400) == pytest.approx(1.3e9)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_params"):
        chinchilla_loss(0, 1e9)
    with pytest.raises(ValueError, match="rule"):
        compute_optimal_tokens(1e6, rule="kaplan")
    with pytest.raises(ValueError, match="kaplan_loss"):
        kaplan_loss()
    with pytest.raises(TypeError, match="config"):
        count_parameters({"dim": 64})


def test_exact_match_is_the_product_of_independent_tokens():
    rng = np.random.default_rng(0)
    p, k = 0.8, 5
    draws = rng.random((200_000, k)) < p  # simulated answers, each token right with probability p
    assert exact_match(p, k) == pytest.approx(draws.all(axis=1).mean(), abs=0.005)
    assert exact_match(np.array([0.0, 0.5, 1.0]), 3).tolist() == [0.0, 0.125, 1.0]
    with pytest.raises(ValueError, match="k=0"):
        exact_match(0.5, 0)
    with pytest.raises(ValueError, match="per_token_accuracy=1.5"):
        exact_match(1.5, 2)
