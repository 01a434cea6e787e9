"""Attention: the written-out path against PyTorch's fused kernel and against itself under GQA algebra."""

import math

import pytest
import torch
import torch.nn.functional as F

from slmbook.attention import GroupedQueryAttention, causal_mask, scaled_dot_product_attention
from slmbook.positional import rope_cos_sin


def _qkv(batch=2, heads=4, kv_heads=2, q_len=6, k_len=6, dim=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, k_len, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, k_len, dim, generator=g, dtype=dtype)
    return q, k, v


def _reference(q, k, v, causal=True):
    """PyTorch's own kernel on key/value heads repeated by hand, float64."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)


def test_causal_mask_is_a_shifted_lower_triangle():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # two new queries after three cached keys: they sit at positions 3 and 4
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    with pytest.raises(ValueError, match="q_len=4 > k_len=2"):
        causal_mask(4, 2)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_attention_matches_torch_reference(heads, kv_heads, impl):
    q, k, v = _qkv(heads=heads, kv_heads=kv_heads)
    out = scaled_dot_product_attention(q, k, v, causal=True, impl=impl)
    torch.testing.assert_close(out.double(), _reference(q, k, v), atol=1e-5, rtol=0)
    out = scaled_dot_product_attention(q, k, v, causal=False, impl=impl)
    torch.testing.assert_close(out.double(), _reference(q, k, v, causal=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("q_len", [1, 3, 7])
@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_queries_after_a_cache_equal_the_last_rows_of_full_attention(q_len, impl):
    """With a KV cache the queries are the last q_len positions; their outputs must equal the
    corresponding rows of attention over the whole sequence."""
    q, k, v = _qkv(heads=4, kv_heads=2, q_len=7, k_len=7)
    full = _reference(q, k, v)
    out = scaled_dot_product_attention(q[:, :, -q_len:], k, v, causal=True, impl=impl)
    torch.testing.assert_close(out.double(), full[:, :, -q_len:], atol=1e-5, rtol=0)


def test_sdpa_path_equals_manual_path_in_bfloat16():
    q, k, v = _qkv(heads=8, kv_heads=2, q_len=9, k_len=9, dim=16, dtype=torch.bfloat16)
    manual = scaled_dot_product_attention(q, k, v, impl="manual")
    fused = scaled_dot_product_attention(q, k, v, impl="sdpa")
    torch.testing.assert_close(fused.float(), manual.float(), atol=2e-2, rtol=0)


def test_weights_are_causal_probabilities_and_match_the_formula():
    q, k, v = _qkv(batch=1, heads=2, kv_heads=2, q_len=5, k_len=5, dim=4)
    out, weights = scaled_dot_product_attention(q, k, v, impl="manual", return_weights=True)
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(4)
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(weights.double(), torch.softmax(scores, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 5))
    assert torch.all(weights[..., torch.ones(5, 5, dtype=torch.bool).triu(1)] == 0)
    torch.testing.assert_close(out, weights @ v)


def test_sdpa_cannot_return_weights():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="impl='manual'"):
        scaled_dot_product_attention(q, k, v, impl="sdpa", return_weights=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=32, n_heads=4, n_kv_heads=3), "n_kv_heads=3"),
    (dict(dim=32, n_heads=4, n_kv_heads=8), "n_kv_heads=8"),
    (dict(dim=30, n_heads=4, n_kv_heads=2), "dim=30"),
    (dict(dim=32, n_heads=4, n_kv_heads=2, head_dim=7), "head_dim=7"),
    (dict(dim=32, n_heads=4, n_kv_heads=2, attn_impl="flash"), "attn_impl='flash'"),
    (dict(dim=32, n_heads=0, n_kv_heads=1), "n_heads=0"),
])
def test_bad_attention_shapes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupedQueryAttention(**kwargs)


def _layer(n_kv_heads, attn_impl="sdpa", qk_norm=True, seed=0):
    torch.manual_seed(seed)
    layer = GroupedQueryAttention(dim=24, n_heads=6, n_kv_heads=n_kv_heads, head_dim=8, qk_norm=qk_norm,
                                  attn_impl=attn_impl)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(1.0 if p.ndim == 1 else 0.0, 0.3)
    return layer


@pytest.mark.parametrize("n_kv_heads", [1, 2, 3, 6])
def test_gqa_equals_mha_with_shared_key_value_heads(n_kv_heads):
    """A GQA layer is an MHA layer whose key/value heads are copies within each group: build that
    MHA layer from the GQA weights and compare."""
    head_dim, groups = 8, 6 // n_kv_heads
    gqa = _layer(n_kv_heads)
    mha = GroupedQueryAttention(dim=24, n_heads=6, n_kv_heads=6, head_dim=8)
    def shared(weight):  # (n_kv_heads * head_dim, 24) -> every key/value head copied for its group
        return weight.view(n_kv_heads, head_dim, 24).repeat_interleave(groups, 0).reshape(-1, 24)

    with torch.no_grad():
        mha.load_state_dict({**gqa.state_dict(), "k_proj.weight": shared(gqa.k_proj.weight),
                             "v_proj.weight": shared(gqa.v_proj.weight)})
    x = torch.randn(2, 10, 24)
    cos, sin = rope_cos_sin(10, 8, 10_000.0)
    torch.testing.assert_close(gqa(x, cos, sin), mha(x, cos, sin), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 6])
def test_layer_sdpa_switch_equals_manual(n_kv_heads):
    layer = _layer(n_kv_heads)
    x = torch.randn(2, 10, 24)
    cos, sin = rope_cos_sin(10, 8, 10_000.0)
    fused = layer(x, cos, sin)
    layer.attn_impl = "manual"
    manual, weights = layer(x, cos, sin, return_weights=True)
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x, cos, sin), manual)
    assert weights.shape == (2, 6, 10, 10)


@pytest.mark.parametrize("attn_impl", ["manual", "sdpa"])
def test_causal_mask_blocks_the_future_gradient(attn_impl):
    """The output at position t must not depend on inputs after t: zero gradient, exactly."""
    layer = _layer(2, attn_impl)
    x = torch.randn(1, 9, 24, requires_grad=True)
    cos, sin = rope_cos_sin(9, 8, 10_000.0)
    t = 4
    layer(x, cos, sin)[0, t].sum().backward()
    per_position = x.grad[0].abs().sum(-1)
    assert torch.all(per_position[t + 1:] == 0)
    assert torch.all(per_position[: t + 1] > 0)  # ... while the past does matter
