"""RMSNorm, LayerNorm, SwiGLU and GELU against torch.nn and transformers with the same weights."""

import math

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

from slmbook.feedforward import GELUFeedForward, SwiGLU, matched_swiglu_hidden_dim
from slmbook.norms import LayerNorm, RMSNorm, make_norm


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.ndim == 1 else 0.0))
    return module


def test_rmsnorm_matches_torch_and_qwen3():
    ours = _randomize(RMSNorm(16, eps=1e-6))
    torch_norm = torch.nn.RMSNorm(16, eps=1e-6)
    hf = Qwen3RMSNorm(16, eps=1e-6)
    torch_norm.load_state_dict(ours.state_dict())
    hf.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16) * 4
    torch.testing.assert_close(ours(x), torch_norm(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours(x), hf(x), atol=0, rtol=0)
    # bfloat16: statistics in float32 as Qwen3 does, bit for bit
    ours_bf16, hf_bf16 = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    torch.testing.assert_close(ours_bf16(xb), hf_bf16(xb), atol=0, rtol=0)


def test_layernorm_matches_torch():
    ours = _randomize(LayerNorm(16, eps=1e-5))
    ref = torch.nn.LayerNorm(16, eps=1e-5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_what_each_norm_removes():
    x = torch.randn(4, 64, dtype=torch.float64) * 5 + 3
    rms = RMSNorm(64, eps=1e-12).double()(x)
    ln = LayerNorm(64, eps=1e-12).double()(x)
    # both take their statistics in float32, as Qwen3RMSNorm does: float32's tolerance, not float64's
    # (float64's 1e-7 failed once, on an unlucky draw before this test was seeded, by 2.4e-7)
    close = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rms.pow(2).mean(-1), torch.ones(4, dtype=torch.float64), **close)  # unit RMS
    assert torch.all(rms.mean(-1).abs() > 0.1)  # the mean survives RMSNorm
    torch.testing.assert_close(ln.mean(-1), torch.zeros(4, dtype=torch.float64), **close)
    torch.testing.assert_close(ln.var(-1, unbiased=False), torch.ones(4, dtype=torch.float64), **close)


def test_norm_factory_and_errors():
    assert isinstance(make_norm("rmsnorm", 8), RMSNorm)
    assert isinstance(make_norm("layernorm", 8), LayerNorm)
    with pytest.raises(ValueError, match="kind='batchnorm'"):
        make_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="eps=0"):
        RMSNorm(8, eps=0)
    with pytest.raises(ValueError, match="dim=0"):
        LayerNorm(0)


def test_swiglu_matches_qwen3_mlp():
    ours = _randomize(SwiGLU(12, 20))
    hf = Qwen3MLP(Qwen3Config(hidden_size=12, intermediate_size=20, hidden_act="silu"))
    hf.load_state_dict(ours.state_dict())
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(ours(x), hf(x), atol=0, rtol=0)


def test_swiglu_is_gate_times_value():
    ours = _randomize(SwiGLU(4, 6)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    gate = x @ ours.gate_proj.weight.T
    value = x @ ours.up_proj.weight.T
    expected = (gate * torch.sigmoid(gate) * value) @ ours.down_proj.weight.T
    torch.testing.assert_close(ours(x), expected)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_feedforward_matches_the_formula(approximate):
    ours = _randomize(GELUFeedForward(4, 16, approximate=approximate)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    h = x @ ours.up_proj.weight.T
    if approximate == "none":
        act = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    else:
        act = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(ours(x), act @ ours.down_proj.weight.T)
    with pytest.raises(ValueError, match="approximate='fast'"):
        GELUFeedForward(4, 16, approximate="fast")


@pytest.mark.parametrize("gelu_hidden", [256, 2048, 3000])
def test_matched_swiglu_has_the_parameters_of_gelu(gelu_hidden):
    dim = 64
    hidden = matched_swiglu_hidden_dim(gelu_hidden)
    gelu_params = sum(p.numel() for p in GELUFeedForward(dim, gelu_hidden).parameters())
    swiglu_params = sum(p.numel() for p in SwiGLU(dim, hidden).parameters())
    assert abs(swiglu_params - gelu_params) <= 3 * dim  # within one hidden unit
    assert matched_swiglu_hidden_dim(gelu_hidden, multiple_of=64) % 64 == 0
    assert matched_swiglu_hidden_dim(gelu_hidden, multiple_of=64) >= hidden


def test_feedforward_bad_sizes():
    with pytest.raises(ValueError, match="hidden_dim=0"):
        SwiGLU(8, 0)
    with pytest.raises(ValueError, match="dim=-1"):
        GELUFeedForward(-1, 8)


# --- blocks, residuals and gradient flow (chapter 10) ------------------------------------------

from slmbook.config import QwenConfig  # noqa: E402
from slmbook.gradient_flow import VARIANTS, compare_variants, layer_gradient_norms  # noqa: E402
from slmbook.positional import rope_cos_sin  # noqa: E402
from slmbook.qwen import QwenModel, TransformerBlock  # noqa: E402

SMALL = QwenConfig(vocab_size=50, context_length=16, dim=16, n_layers=6, n_heads=2, n_kv_heads=1, hidden_dim=32)


@pytest.mark.parametrize("norm_position, residual", [("pre", True), ("post", True), ("pre", False), ("post", False)])
def test_block_variants_follow_their_formulas(norm_position, residual):
    torch.manual_seed(0)
    block = _randomize(TransformerBlock(SMALL, norm_position=norm_position, residual=residual))
    x = torch.randn(2, 5, 16)
    cos, sin = rope_cos_sin(5, 8)

    def attn(h):
        return block.self_attn(h, cos, sin)

    n1, n2, mlp = block.input_layernorm, block.post_attention_layernorm, block.mlp
    if (norm_position, residual) == ("pre", True):
        h = x + attn(n1(x))
        expected = h + mlp(n2(h))
    elif (norm_position, residual) == ("post", True):
        h = n1(x + attn(x))
        expected = n2(h + mlp(h))
    elif (norm_position, residual) == ("pre", False):
        expected = mlp(n2(attn(n1(x))))
    else:
        expected = n2(mlp(n1(attn(x))))
    torch.testing.assert_close(block(x, cos, sin), expected)


def test_layer_gradient_norms_equal_autograd_per_block():
    torch.manual_seed(0)
    model = QwenModel(SMALL)
    ids = torch.randint(0, 50, (2, 9))
    norms = layer_gradient_norms(model, ids[:, :-1], ids[:, 1:])
    assert all(p.grad is None for p in model.parameters())  # leaves no trace
    _, loss = model(ids[:, :-1], targets=ids[:, 1:])
    for layer, norm in zip(model.layers, norms, strict=True):
        grads = torch.autograd.grad(loss, list(layer.parameters()), retain_graph=True)
        assert norm == pytest.approx(torch.cat([g.flatten() for g in grads]).norm().item(), rel=1e-5)
    assert len(norms) == SMALL.n_layers


def test_residuals_keep_gradients_within_one_order_of_magnitude():
    """The chapter-10 claim, measured: with residuals the per-layer gradient norms of a 12-layer
    stack stay within 5x of each other; without them they spread over more than 10x."""
    config = SMALL.replace(n_layers=12, dim=32, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=200)
    ids = torch.randint(0, 200, (4, 17), generator=torch.Generator().manual_seed(0))
    results = compare_variants(config, ids[:, :-1], ids[:, 1:])
    assert set(results) == set(VARIANTS)
    spread = {name: max(v) / min(v) for name, v in results.items()}
    for name, value in spread.items():
        assert (value < 5) if "+ residual" in name else (value > 10), (name, value)


# --- training a deep stack with and without residuals (chapter 10) -----------------------------

from slmbook.gradient_flow import FeedForwardStack, block_gradient_norms, stack_loss, train_stack  # noqa: E402


@pytest.mark.parametrize("residual", [True, False])
def test_feedforward_stack_is_its_formula(residual):
    """The forward pass against plain torch ops on the same weights: torch.nn.RMSNorm and F.silu."""
    model = FeedForwardStack(vocab_size=11, context=3, depth=4, width=8, embed_dim=5, residual=residual)
    model.init_weights(std=0.3, seed=1)
    with torch.no_grad():
        for norm in model.norms:
            norm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, 11, (6, 3), generator=torch.Generator().manual_seed(0))
    h = model.embed_tokens.weight[ids].reshape(6, 15) @ model.in_proj.weight.T
    for norm, block in zip(model.norms, model.blocks, strict=True):
        ref_norm = torch.nn.RMSNorm(8, eps=norm.eps)
        ref_norm.load_state_dict(norm.state_dict())
        z = ref_norm(h)
        f = (torch.nn.functional.silu(z @ block.gate_proj.weight.T) * (z @ block.up_proj.weight.T)) @ block.down_proj.weight.T
        h = h + f if residual else f
    final = torch.nn.RMSNorm(8, eps=model.norm.eps)
    final.load_state_dict(model.norm.state_dict())
    torch.testing.assert_close(model(ids), final(h) @ model.lm_head.weight.T)


def test_both_stacks_have_the_same_parameters():
    a = FeedForwardStack(20, 4, 3, 8, residual=True)
    b = FeedForwardStack(20, 4, 3, 8, residual=False)
    a.init_weights(seed=0)
    b.init_weights(seed=0)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_train_stack_is_adamw_run_by_hand():
    """Three steps of train_stack against torch.optim.AdamW run by hand on the same windows: the same
    losses, the same weights after, and gradient norms that are each block's mean over the steps."""
    tokens = torch.randint(0, 13, (200,), generator=torch.Generator().manual_seed(3))
    model = FeedForwardStack(13, 4, 3, 8)
    model.init_weights(std=0.1, seed=0)
    reference = FeedForwardStack(13, 4, 3, 8)
    reference.load_state_dict(model.state_dict())
    result = train_stack(model, tokens, steps=3, batch_size=5, lr=1e-2, seed=7)
    generator = torch.Generator().manual_seed(7)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
    losses, per_step = [], []
    for _ in range(3):
        starts = torch.randint(0, 200 - 4, (5,), generator=generator)
        windows = torch.stack([tokens[s:s + 5] for s in starts.tolist()])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(windows[:, :4]), windows[:, 4])
        loss.backward()
        losses.append(loss.item())
        per_step.append(block_gradient_norms(reference))
        optimizer.step()
    assert result["loss"] == pytest.approx(losses, rel=1e-6)
    assert result["gradient norms"] == pytest.approx([sum(b) / 3 for b in zip(*per_step, strict=True)], rel=1e-6)
    assert result["gradient norms"] != pytest.approx(per_step[-1], rel=1e-3)  # the mean, not the last step's
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_residual_stack_learns_a_pattern_the_plain_stack_cannot():
    """The chapter's claim at test size: 12 blocks, a periodic sequence; with residuals the loss
    falls far below the uniform guess, without them it stays near it."""
    tokens = torch.arange(8).repeat(200)
    losses = {}
    for residual in (True, False):
        model = FeedForwardStack(8, 2, 12, 16, residual=residual)
        model.init_weights(seed=0)
        train_stack(model, tokens, steps=60, batch_size=32, lr=3e-3)
        losses[residual] = stack_loss(model, tokens, windows=64)
    assert losses[True] < 0.5 < 0.9 * math.log(8) < losses[False], losses


def test_stack_errors():
    model = FeedForwardStack(10, 4, 2, 8)
    with pytest.raises(ValueError, match="depth=0"):
        FeedForwardStack(10, 4, 0, 8)
    with pytest.raises(ValueError, match="1-D torch.long"):
        train_stack(model, torch.zeros(50), steps=1)
    with pytest.raises(ValueError, match="at least context \\+ 2 = 6"):
        stack_loss(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 10\)"):
        train_stack(model, torch.full((50,), 10), steps=1)
    with pytest.raises(ValueError, match="steps=0"):
        train_stack(model, torch.zeros(50, dtype=torch.long), steps=0)
    with pytest.raises(ValueError, match="threads=0"):
        train_stack(model, torch.zeros(50, dtype=torch.long), steps=1, threads=0)


def test_train_stack_restores_the_thread_count():
    before = torch.get_num_threads()
    model = FeedForwardStack(10, 4, 2, 8)
    train_stack(model, torch.zeros(50, dtype=torch.long), steps=2, threads=1)
    assert torch.get_num_threads() == before


def test_feedforward_stack_with_layernorm():
    model = FeedForwardStack(12, 3, 2, 8, norm="layernorm")
    model.init_weights(seed=0)
    assert all(isinstance(n, LayerNorm) for n in [*model.norms, model.norm])
    assert all(torch.equal(n.bias, torch.zeros(8)) for n in model.norms)
    with pytest.raises(ValueError, match="norm kind='batchnorm'"):
        FeedForwardStack(12, 3, 2, 8, norm="batchnorm")
