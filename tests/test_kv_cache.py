"""The KV cache: its size against the formula, its contents against recomputation."""

import pytest
import torch

from slmbook.config import QwenConfig
from slmbook.kv_cache import KVCache, config_kv_cache_bytes, kv_cache_bytes
from slmbook.qwen import QwenModel

CONFIG = QwenConfig(vocab_size=64, context_length=40, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=48)


def _formula(layers, kv_heads, head_dim, tokens, batch, bytes_per_element):
    return 2 * layers * kv_heads * head_dim * tokens * batch * bytes_per_element


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("dtype, size", [("float32", 4), ("bfloat16", 2)])
@pytest.mark.parametrize("max_tokens", [None, 40])
def test_cache_bytes_equal_the_formula(n_kv_heads, dtype, size, max_tokens):
    config = CONFIG.replace(n_kv_heads=n_kv_heads, dtype=dtype)
    model = QwenModel(config)
    cache = KVCache.for_model(model, batch_size=2, max_tokens=max_tokens)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        model(ids, kv_cache=cache)
        for _ in range(5):
            model(ids[:, :1], kv_cache=cache)
    tokens = 12
    expected = _formula(3, n_kv_heads, 8, tokens, 2, size)
    assert cache.length == tokens
    assert cache.nbytes() == expected
    assert kv_cache_bytes(3, n_kv_heads, 8, tokens, batch_size=2, dtype=dtype) == expected
    assert config_kv_cache_bytes(config, tokens, batch_size=2) == expected
    allocated = _formula(3, n_kv_heads, 8, max_tokens or tokens, 2, size)
    assert cache.allocated_nbytes() == allocated
    assert all(k.dtype == getattr(torch, dtype) for k in cache.keys)


def test_qwen3_0_6b_cache_size():
    """Qwen3-0.6B in bfloat16: 2 x 28 layers x 8 kv heads x 128 x 2 bytes = 114,688 bytes per token."""
    from slmbook.config import QWEN3_0_6B

    assert config_kv_cache_bytes(QWEN3_0_6B, 1) == 114_688
    assert config_kv_cache_bytes(QWEN3_0_6B, 40_960) == 114_688 * 40_960


def test_cache_stores_exactly_the_keys_and_values_of_a_full_pass():
    torch.manual_seed(0)
    model = QwenModel(CONFIG)
    ids = torch.randint(0, 64, (1, 10))
    full, step = KVCache.for_model(model), KVCache.for_model(model, max_tokens=10)
    with torch.no_grad():
        model(ids, kv_cache=full)
        for t in range(10):
            model(ids[:, t:t + 1], kv_cache=step)
    for layer in range(3):
        torch.testing.assert_close(step.keys[layer][:, :, :10], full.keys[layer], atol=1e-6, rtol=0)
        torch.testing.assert_close(step.values[layer][:, :, :10], full.values[layer], atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_static_cache_gives_the_logits_of_a_full_pass_through_its_mask(attn_impl):
    """A static cache attends over its whole buffer, empty slots included, through the mask: the
    logits must still be those of the full sequence, for a prompt and then token by token."""
    torch.manual_seed(0)
    model = QwenModel(CONFIG, attn_impl=attn_impl)
    ids = torch.randint(0, 64, (2, 12))
    cache = KVCache.for_model(model, batch_size=2, max_tokens=16, static=True)
    with torch.no_grad():
        expected = model(ids)
        steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)
    assert cache.length == 12 and cache.offset.item() == 12
    assert cache.mask.shape == (1, 16) and cache.mask.sum().item() == 12  # the last token saw 12 keys
    cache.reset()
    assert cache.length == 0 and cache.offset.item() == 0


def test_static_cache_arguments_and_order_of_calls():
    with pytest.raises(ValueError, match="static=True needs max_tokens"):
        KVCache(1, 2, 4, static=True)
    with pytest.raises(ValueError, match="static='yes'"):
        KVCache(1, 2, 4, max_tokens=4, static="yes")
    with pytest.raises(ValueError, match="begin"):
        KVCache(1, 2, 4, max_tokens=4).begin(1)
    cache = KVCache(1, 2, 4, max_tokens=4, static=True)
    k = torch.randn(1, 2, 1, 4)
    with pytest.raises(RuntimeError, match="begin"):
        cache.update(0, k, k)
    cache.begin(3)
    cache.advance(3)
    with pytest.raises(ValueError, match="max_tokens=4"):
        cache.begin(2)


def test_preallocated_cache_refuses_overflow_and_resets():
    cache = KVCache(1, 2, 4, max_tokens=3)
    k = torch.randn(1, 2, 2, 4)
    cache.update(0, k, k)
    cache.advance(2)
    with pytest.raises(ValueError, match="max_tokens=3"):
        cache.update(0, k, k)
    cache.reset()
    assert cache.length == 0 and cache.nbytes() == 0 and cache.allocated_nbytes() == 2 * 2 * 3 * 4 * 4


def test_growing_cache_checks_its_bookkeeping():
    cache = KVCache(2, 2, 4)
    k = torch.randn(1, 2, 1, 4)
    cache.update(0, k, k)
    with pytest.raises(RuntimeError, match="advance"):
        cache.update(0, k, k)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="float64"), "dtype='float64'"),
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(max_tokens=0), "max_tokens=0"),
    (dict(batch_size=0), "batch_size=0"),
])
def test_bad_cache_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KVCache(2, 2, 4, **kwargs)


def test_bad_updates_and_formula_arguments():
    cache = KVCache(2, 2, 4)
    with pytest.raises(ValueError, match="layer=2"):
        cache.update(2, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="expects"):
        cache.update(0, torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))
    with pytest.raises(ValueError, match="tokens=-1"):
        kv_cache_bytes(2, 2, 4, -1)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        kv_cache_bytes(2, 2, 4, 1, dtype="fp8")


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_cached_keys_and_values_stay_valid_only_under_causal_attention(attn_impl):
    from slmbook.kv_cache import prefix_kv_change

    torch.manual_seed(0)
    model = QwenModel(CONFIG, attn_impl=attn_impl).eval()
    ids = torch.randint(0, 64, (2, 12))
    assert torch.all(prefix_kv_change(model, ids, 11) < 1e-5)  # causal: appending a token changes nothing
    for layer in model.layers:
        layer.self_attn.causal = False
    drift = prefix_kv_change(model, ids, 11)
    assert drift[0] < 1e-5  # layer 0's keys and values are a function of each token alone
    assert torch.all(drift[1:] > 1e-3)  # deeper ones mix in the future token once attention can see it
    with pytest.raises(ValueError, match="prefix"):
        prefix_kv_change(model, ids, 12)


def test_generation_benchmarks_are_read_from_the_results_folder(tmp_path):
    from slmbook.kv_cache import generation_benchmarks

    results = generation_benchmarks()
    assert {"cpu", "cuda"} <= set(results)
    for data in results.values():
        assert data["hardware"]["device"] in ("cpu", "cuda")
        for row in data["rows"]:  # the stored speed-ups are the ratios of the stored rates
            assert abs(row["speedup"] - row["cache_tokens_per_s"] / row["no_cache_tokens_per_s"]) < 1e-6 * row["speedup"]
    assert generation_benchmarks(tmp_path) == {}  # no results (a package without benchmarks/): nothing
    assert generation_benchmarks(tmp_path / "absent") == {}
    (tmp_path / "kv_cache_generation_odd.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="missing"):
        generation_benchmarks(tmp_path)
