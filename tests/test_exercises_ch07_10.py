"""Chapters 7-10 exercise checkers: right answers (computed independently here) pass, wrong ones fail."""

import math

import pytest
import torch

from slmbook.exercises import ch07, ch08, ch09, ch10


# --- reference answers, written from the formulas, not from slmbook ------------------------------

def rope_by_hand(x, position, theta):
    half = x.shape[0] // 2
    out = x.clone()
    for i in range(half):
        angle = position * theta ** (-2 * i / x.shape[0])
        a, b = x[i].item(), x[i + half].item()
        out[i] = a * math.cos(angle) - b * math.sin(angle)
        out[i + half] = a * math.sin(angle) + b * math.cos(angle)
    return out


def attention_by_hand(q, k):
    scores = q @ k.T / math.sqrt(q.shape[1])
    future = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def rmsnorm_by_hand(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("check", [
    ch07.check_slowest_pair_turn, ch07.check_rope_rotation, ch08.check_attention_weights,
    ch09.check_qwen3_cache_bytes, ch09.check_book_tokens_per_gib, ch10.check_rmsnorm,
    ch10.check_qwen3_swiglu_parameters,
])
def test_none_is_not_attempted(check):
    result = check(None)
    assert result.status == "not attempted" and "Hint" in result.message


def test_ch07_slowest_pair():
    expected = 2 * math.pi * 1_000_000.0 ** (126 / 128)
    assert ch07.check_slowest_pair_turn(expected).correct
    assert ch07.check_slowest_pair_turn(round(expected)).correct
    assert not ch07.check_slowest_pair_turn(2 * math.pi * 1_000_000.0).correct  # forgot the exponent
    assert not ch07.check_slowest_pair_turn(1_000_000.0 ** (126 / 128)).correct  # radians, not turns
    assert not ch07.check_slowest_pair_turn("many").correct


def test_ch07_rope_function():
    assert ch07.check_rope_rotation(rope_by_hand).correct

    def interleaved(x, position, theta):  # pairs (2i, 2i+1): the other common layout, not Qwen's
        out = x.clone()
        for i in range(x.shape[0] // 2):
            angle = position * theta ** (-2 * i / x.shape[0])
            a, b = x[2 * i].item(), x[2 * i + 1].item()
            out[2 * i] = a * math.cos(angle) - b * math.sin(angle)
            out[2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
        return out

    assert not ch07.check_rope_rotation(interleaved).correct
    assert not ch07.check_rope_rotation(lambda x, p, t: x).correct
    crashed = ch07.check_rope_rotation(lambda x, p, t: 1 / 0)
    assert crashed.status == "wrong" and "ZeroDivisionError" in crashed.message


def test_ch08_attention_function():
    assert ch08.check_attention_weights(attention_by_hand).correct
    unscaled = lambda q, k: torch.softmax((q @ k.T).masked_fill(  # noqa: E731
        torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    assert not ch08.check_attention_weights(unscaled).correct
    unmasked = lambda q, k: torch.softmax(q @ k.T / math.sqrt(q.shape[1]), dim=-1)  # noqa: E731
    assert not ch08.check_attention_weights(unmasked).correct


def test_ch09_cache_bytes():
    expected = 2 * 28 * 8 * 128 * 8192 * 4 * 2
    assert ch09.check_qwen3_cache_bytes(expected).correct
    assert not ch09.check_qwen3_cache_bytes(expected // 2).correct  # forgot keys or values
    assert not ch09.check_qwen3_cache_bytes(2 * 28 * 16 * 128 * 8192 * 4 * 2).correct  # query heads
    assert not ch09.check_qwen3_cache_bytes(float(expected)).correct


def test_ch09_tokens_per_gib():
    per_token = 2 * 8 * 4 * 64 * 2  # BOOK: 8 layers, 4 KV heads, head_dim 512/8
    assert ch09.check_book_tokens_per_gib(2**30 // per_token).correct
    assert not ch09.check_book_tokens_per_gib(10**9 // per_token).correct  # GB, not GiB
    assert not ch09.check_book_tokens_per_gib(2**30 // (per_token * 2)).correct  # float32


def test_ch10_rmsnorm_function():
    assert ch10.check_rmsnorm(rmsnorm_by_hand).correct
    layer_norm = lambda x, w, eps: (x - x.mean(-1, keepdim=True)) / torch.sqrt(  # noqa: E731
        x.var(-1, unbiased=False, keepdim=True) + eps) * w
    assert not ch10.check_rmsnorm(layer_norm).correct
    no_weight = lambda x, w, eps: x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)  # noqa: E731
    assert not ch10.check_rmsnorm(no_weight).correct


def test_ch10_swiglu_parameters():
    assert ch10.check_qwen3_swiglu_parameters(3 * 1024 * 3072).correct
    assert not ch10.check_qwen3_swiglu_parameters(2 * 1024 * 3072).correct  # a GELU layer's count
    assert not ch10.check_qwen3_swiglu_parameters(3 * 1024 * 3072 + 3072).correct
