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


# --- head scores against hand-built attention patterns ------------------------------------------------

def _previous_token_pattern(T):
    """Every query puts all its weight on the token before it (query 0 on itself)."""
    w = torch.zeros(T, T)
    w[0, 0] = 1
    w[torch.arange(1, T), torch.arange(T - 1)] = 1
    return w


def _uniform_causal_pattern(T):
    return torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]


def _induction_pattern(ids):
    """Query t looks at the token after the latest earlier copy of ids[t]; at itself if there is none."""
    T = len(ids)
    w = torch.zeros(T, T)
    for t in range(T):
        copies = [j for j in range(t - 1) if ids[j] == ids[t]]
        w[t, copies[-1] + 1 if copies else t] = 1
    return w


def test_previous_token_score_of_hand_built_patterns():
    from slmbook.attention import previous_token_score

    T = 7
    heads = torch.stack([_previous_token_pattern(T), _uniform_causal_pattern(T), torch.eye(T)])[None]
    expected_uniform = sum(1 / (t + 1) for t in range(1, T)) / (T - 1)  # query t gives 1/(t+1) to each key
    torch.testing.assert_close(previous_token_score(heads), torch.tensor([1.0, expected_uniform, 0.0]))
    # half the weight one back, half on itself: 0.5; a batch of two such sentences averages them
    half = 0.5 * _previous_token_pattern(T) + 0.5 * torch.eye(T)
    half[0, 0] = 1.0
    batch = torch.stack([torch.stack([half]), torch.stack([_previous_token_pattern(T)])])
    torch.testing.assert_close(previous_token_score(batch), torch.tensor([0.75]))


def test_induction_score_of_hand_built_patterns():
    from slmbook.attention import induction_score, induction_targets

    ids = torch.tensor([5, 6, 7, 5, 6, 7, 9])  # "a b c a b c d": queries 3, 4, 5 repeat an earlier token
    assert induction_targets(ids)[0].nonzero().tolist() == [[3, 1], [4, 2], [5, 3]]
    heads = torch.stack([_induction_pattern(ids.tolist()), _previous_token_pattern(7), _uniform_causal_pattern(7)])
    # uniform: query 3 gives 1/4 to key 1, query 4 gives 1/5 to key 2, query 5 gives 1/6 to key 3
    expected_uniform = (1 / 4 + 1 / 5 + 1 / 6) / 3
    torch.testing.assert_close(induction_score(heads[None], ids), torch.tensor([1.0, 0.0, expected_uniform]))


def test_induction_score_counts_every_earlier_copy_and_skips_the_trivial_one():
    from slmbook.attention import induction_score, induction_targets

    ids = torch.tensor([[3, 4, 3, 8, 3, 3]])
    # the 3s at 0, 2 and 4 are followed by keys 1, 3 and 5: query 2 gets key 1, query 4 keys 1 and 3,
    # query 5 (the 3 right after a 3) keys 1 and 3 but not 5, which is the query itself
    assert induction_targets(ids)[0].nonzero().tolist() == [[2, 1], [4, 1], [4, 3], [5, 1], [5, 3]]
    w = torch.zeros(1, 1, 6, 6)
    w[0, 0, 2, 1] = 1.0  # all on the target
    w[0, 0, 4, 1], w[0, 0, 4, 3] = 0.25, 0.25  # half, split over two targets
    w[0, 0, 5, 5] = 1.0  # none
    torch.testing.assert_close(induction_score(w, ids), torch.tensor([(1.0 + 0.5 + 0.0) / 3]))


def test_scores_per_layer_and_head_of_a_model():
    """A list of layers gives (layers, heads); each row equals the score of that layer alone."""
    from slmbook.attention import induction_score, previous_token_score
    from slmbook.config import QwenConfig
    from slmbook.qwen import QwenModel

    torch.manual_seed(0)
    model = QwenModel(QwenConfig(vocab_size=50, context_length=32, dim=32, n_layers=3, n_heads=4, n_kv_heads=2,
                                 hidden_dim=48)).eval()
    ids = torch.randint(0, 50, (2, 12))
    ids[:, 6:] = ids[:, :6]  # the first half repeated: every query of the second half has a copy
    with torch.no_grad():
        _, attentions = model(ids, return_attention=True)
    prev, induction = previous_token_score(attentions), induction_score(attentions, ids)
    assert prev.shape == induction.shape == (3, 4)
    assert torch.all((prev > 0) & (prev < 1)) and torch.all((induction > 0) & (induction < 1))
    for layer, weights in enumerate(attentions):
        # by hand: loops over the query positions
        by_hand = torch.stack([weights[:, :, t, t - 1] for t in range(1, 12)], -1).mean(dim=(0, -1))
        torch.testing.assert_close(prev[layer], by_hand)


@pytest.mark.parametrize("call, match", [
    (lambda f: f.previous_token_score(torch.ones(4, 4)), "batch, heads, tokens, tokens"),
    (lambda f: f.previous_token_score(torch.ones(1, 2, 3, 4)), "batch, heads, tokens, tokens"),
    (lambda f: f.previous_token_score(torch.ones(1, 2, 1, 1)), "at least 2 tokens"),
    (lambda f: f.previous_token_score([]), "one .* per layer"),
    (lambda f: f.induction_score(torch.ones(1, 1, 4, 4), torch.tensor([1, 2, 3, 4])), "no token that repeats"),
    (lambda f: f.induction_score(torch.ones(1, 1, 4, 4), torch.tensor([1.0, 1, 1, 1])), "integer tensor"),
    (lambda f: f.induction_score(torch.ones(2, 1, 4, 4), torch.tensor([1, 1, 1, 1])), "disagree"),
])
def test_bad_score_inputs_are_refused(call, match):
    import slmbook.attention as f

    with pytest.raises(ValueError, match=match):
        call(f)


def test_loss_by_position_equals_cross_entropy_of_each_sequence():
    from slmbook.attention import loss_by_position
    from slmbook.config import QwenConfig
    from slmbook.qwen import QwenModel

    torch.manual_seed(1)
    model = QwenModel(QwenConfig(vocab_size=40, context_length=16, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                 hidden_dim=48)).eval()
    sequences = [torch.randint(0, 40, (n,)).tolist() for n in (9, 4, 12, 2, 12)]
    mean, count = loss_by_position(model, sequences, batch_size=2)
    assert count.tolist() == [5, 4, 4, 3, 3, 3, 3, 3, 2, 2, 2]
    per_sequence = []
    with torch.no_grad():
        for s in sequences:  # one at a time, unpadded: torch's cross-entropy per position
            ids = torch.tensor(s)
            per_sequence.append(F.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="none"))
    for p in range(11):
        expected = torch.stack([losses[p] for losses in per_sequence if len(losses) > p]).mean()
        torch.testing.assert_close(mean[p], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        loss_by_position(model, [[1]])


@pytest.mark.parametrize("attn_impl", ["manual", "sdpa"])
def test_a_layer_made_non_causal_attends_to_every_token(attn_impl):
    layer = _layer(2, attn_impl)
    x = torch.randn(2, 7, 24)
    cos, sin = rope_cos_sin(7, 8, 10_000.0)
    layer.causal = False
    out = layer(x, cos, sin)
    x_all = x.clone()
    x_all[:, -1] += 1.0  # the last token changes every position's output once the future is visible
    assert not torch.allclose(layer(x_all, cos, sin)[:, 0], out[:, 0])
    layer.causal = True
    torch.testing.assert_close(layer(x_all, cos, sin)[:, 0], layer(x, cos, sin)[:, 0])


def test_regrouped_kv_heads_copy_or_average_the_trained_ones():
    from slmbook.attention import regroup_kv_heads
    from slmbook.config import QwenConfig
    from slmbook.qwen import QwenModel

    torch.manual_seed(2)
    model = QwenModel(QwenConfig(vocab_size=50, context_length=16, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                 hidden_dim=48)).eval()
    ids = torch.randint(0, 50, (2, 10))
    mha = regroup_kv_heads(model, 4)  # each key/value head copied for the two query heads it served
    assert mha.config.n_kv_heads == 4 and mha.layers[0].self_attn.k_proj.weight.shape == (4 * 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(mha(ids), model(ids), atol=1e-5, rtol=0)  # the same function
    mqa = regroup_kv_heads(model, 1)
    for name in ("k_proj", "v_proj"):
        w = getattr(model.layers[1].self_attn, name).weight
        torch.testing.assert_close(getattr(mqa.layers[1].self_attn, name).weight, (w[:8] + w[8:]) / 2)
    with torch.no_grad():
        assert mqa(ids).shape == (2, 10, 50)
    assert model.config.n_kv_heads == 2 and model.layers[0].self_attn.k_proj.weight.shape == (16, 32)  # untouched
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        regroup_kv_heads(model, 3)
