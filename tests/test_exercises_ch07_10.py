"""Chapters 7-10 exercise checkers: right answers (computed independently here) pass, wrong ones fail."""

import json
import math
import re
from pathlib import Path

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


@pytest.mark.parametrize("check, wrong", [
    (ch07.check_slowest_pair_turn, 1.0),
    (ch07.check_rope_rotation, lambda x, p, t: x),
    (ch08.check_attention_weights, lambda q, k: q @ k.T),
    (ch09.check_cache_bytes_from_config, lambda config, tokens, batch: 0),
    (ch09.check_book_tokens_per_gib, 1),
    (ch10.check_gelu_hidden_matching_qwen3_swiglu, 3072),
    (ch10.check_rmsnorm, lambda x, w, eps: x),
])
def test_hint_only_after_a_wrong_try(check, wrong):
    result = check(None)
    assert result.status == "not attempted" and "Hint" not in result.message
    result = check(wrong)
    assert result.status == "wrong" and "Hint" in result.message


def test_ch07_slowest_pair():
    expected = 2 * math.pi * 1_000_000.0 ** (126 / 128)
    assert ch07.check_slowest_pair_turn(expected).correct
    assert ch07.check_slowest_pair_turn(round(expected)).correct
    assert not ch07.check_slowest_pair_turn(2 * math.pi * 1_000_000.0).correct  # forgot the exponent
    assert not ch07.check_slowest_pair_turn(1_000_000.0 ** (126 / 128)).correct  # radians, not turns
    assert not ch07.check_slowest_pair_turn("many").correct


def test_ch07_slowest_pair_refuses_a_tensor_clearly():
    expected = 2 * math.pi * 1_000_000.0 ** (126 / 128)
    for tensor in (torch.tensor(expected, dtype=torch.float64), torch.tensor([expected])):
        result = ch07.check_slowest_pair_turn(tensor)
        assert result.status == "wrong" and "tensor" in result.message and ".item()" in result.message
    assert ch07.check_slowest_pair_turn(float(torch.tensor(expected, dtype=torch.float64))).correct
    assert not ch07.check_slowest_pair_turn(True).correct


def test_ch07_answer_is_not_printed_in_the_chapter():
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "07_embeddings_rope.ipynb").read_text())
    text = "\n".join("".join(out.get("text", "")) + "".join("".join(v) for k, v in out.get("data", {}).items()
                                                          if k.startswith("text/"))
                     for cell in nb["cells"] for out in cell.get("outputs", []))
    numbers = {float(m.replace(",", "")) for m in re.findall(r"\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?", text)}
    assert len(numbers) > 20
    assert [x for x in numbers if ch07.check_slowest_pair_turn(x).correct] == []


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


def cache_bytes_by_hand(config, tokens, batch_size):
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    size = {"float32": 4, "bfloat16": 2, "float16": 2}[config["torch_dtype"]]
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * tokens * batch_size * size


def test_ch09_cache_bytes_from_config():
    assert ch09.check_cache_bytes_from_config(cache_bytes_by_hand).correct

    def query_heads(config, tokens, batch_size):
        return cache_bytes_by_hand({**config, "num_key_value_heads": config["num_attention_heads"]}, tokens, batch_size)

    result = ch09.check_cache_bytes_from_config(query_heads)
    assert not result.correct and "not the query heads" in result.message
    result = ch09.check_cache_bytes_from_config(lambda c, t, b: cache_bytes_by_hand(c, t, b) // 2)
    assert not result.correct and "keys and values" in result.message
    always_head_dim = lambda c, t, b: cache_bytes_by_hand({"head_dim": 128, **c}, t, b)  # noqa: E731
    assert not ch09.check_cache_bytes_from_config(always_head_dim).correct
    as_float = lambda c, t, b: float(cache_bytes_by_hand(c, t, b))  # noqa: E731
    assert not ch09.check_cache_bytes_from_config(as_float).correct
    crashed = ch09.check_cache_bytes_from_config(lambda c, t, b: c["head_dim"] * 0 + c["num_key_value_heads"])
    assert crashed.status == "wrong" and "KeyError" in crashed.message


def test_ch09_configs_are_varied_and_loadable():
    """The made-up configs cover what the hint talks about, and build a real model shape."""
    import random

    from slmbook.hf_interop import config_from_hf

    rng = random.Random(9)
    configs = [ch09.random_hf_config(rng) for _ in range(12)]
    assert any("head_dim" not in c for c in configs) and any("head_dim" in c for c in configs)
    assert any("num_key_value_heads" not in c for c in configs)
    assert any(c.get("num_key_value_heads", c["num_attention_heads"]) < c["num_attention_heads"] for c in configs)
    assert len({c["torch_dtype"] for c in configs}) == 3
    from slmbook.kv_cache import config_kv_cache_bytes

    for c in configs:
        assert config_kv_cache_bytes(config_from_hf(c), 7, 2) == cache_bytes_by_hand(c, 7, 2)


def _notebook_numbers(name):
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / name).read_text())
    texts = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    texts += ["".join(out.get("text", "")) + "".join("".join(v) for k, v in out.get("data", {}).items()
                                                     if k.startswith("text/"))
              for cell in nb["cells"] for out in cell.get("outputs", [])]
    return {int(m.replace(",", "")) for m in re.findall(r"\d[\d,]*", "\n".join(texts))}


def test_ch09_answer_is_not_printed_in_the_chapter():
    integers = _notebook_numbers("09_kv_cache.ipynb")
    assert len(integers) > 20
    assert [x for x in integers if ch09.check_book_tokens_per_gib(x).correct] == []


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


def test_ch10_gelu_hidden_matching_qwen3_swiglu():
    swiglu = 3 * 1024 * 3072  # Qwen3-0.6B: gate, up and down projections, dim 1024, hidden 3072
    assert ch10.check_gelu_hidden_matching_qwen3_swiglu(swiglu // (2 * 1024)).correct
    assert not ch10.check_gelu_hidden_matching_qwen3_swiglu(4 * 1024).correct  # GPT's 4 x dim
    assert not ch10.check_gelu_hidden_matching_qwen3_swiglu(3072).correct  # the SwiGLU hidden size itself
    assert not ch10.check_gelu_hidden_matching_qwen3_swiglu(swiglu).correct
    assert not ch10.check_gelu_hidden_matching_qwen3_swiglu(4608.0).correct  # an integer, please


def test_ch10_answer_is_not_printed_in_the_chapter():
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "10_norms_swiglu_residuals.ipynb").read_text())
    texts = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    texts += ["".join(out.get("text", "")) + "".join("".join(v) for k, v in out.get("data", {}).items()
                                                     if k.startswith("text/"))
              for cell in nb["cells"] for out in cell.get("outputs", [])]
    numbers = {m.replace(",", "") for m in re.findall(r"\d[\d,]*(?:\.\d+)?", "\n".join(texts))}
    integers = [int(x) for x in numbers if x.isdigit()]
    assert len(integers) > 20
    assert [x for x in integers if ch10.check_gelu_hidden_matching_qwen3_swiglu(x).correct] == []
