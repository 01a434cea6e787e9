"""Mixture of experts against references: transformers' Qwen3-MoE and DeepSeek-V3 layers, a dense
computation over all experts, the published loss formulas and a step-by-step capacity simulation."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DeepseekV3Config, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter, load_balancing_loss_func

from slmbook import hf_interop, moe
from slmbook.config import QwenConfig
from slmbook.feedforward import SwiGLU
from slmbook.qwen import QwenModel

BASE = QwenConfig(vocab_size=97, context_length=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                  rope_theta=10_000.0, n_experts=4, n_experts_per_token=2, moe_hidden_dim=16)
CONFIGS = {
    "top2-of-4-normalized-tied": BASE,
    "top2-of-4-raw-untied": BASE.replace(router_normalize=False, tie_embeddings=False),
    "top1-of-8": BASE.replace(n_experts=8, n_experts_per_token=1),
    "top3-of-6-mqa": BASE.replace(n_experts=6, n_experts_per_token=3, n_kv_heads=1, moe_hidden_dim=8),
}


def layer(seed=0, **kwargs) -> moe.MoEFeedForward:
    options = dict(dim=16, n_experts=4, top_k=2, hidden_dim=8)
    options.update(kwargs)
    torch.manual_seed(seed)
    m = moe.MoEFeedForward(**options)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:  # the balance bias starts at 0
                p.normal_(0.0, 0.5)
    return m


def inputs(n=24, dim=16, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# --- the router -----------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_softmax_router_equals_qwen3_moe_router(normalize):
    m = layer(n_experts=8, top_k=2)
    m.gate.normalize = normalize
    hf = Qwen3MoeTopKRouter(Qwen3MoeConfig(hidden_size=16, num_experts=8, num_experts_per_tok=2,
                                           norm_topk_prob=normalize))
    hf.weight.data.copy_(m.gate.weight)
    x = inputs()
    logits, weights, experts = hf(x)
    r = m.gate.route(x)
    assert torch.equal(r.experts, experts)
    assert torch.allclose(r.weights, weights, atol=1e-7, rtol=0)
    assert torch.allclose(r.logits, logits, atol=1e-6, rtol=0)


def deepseek_reference(m: moe.MoEFeedForward, n_shared: int) -> DeepseekV3MoE:
    """transformers' DeepSeek-V3 MoE layer (one expert group, no routed scaling) with m's weights."""
    config = DeepseekV3Config(hidden_size=16, moe_intermediate_size=8, n_routed_experts=m.n_experts,
                              num_experts_per_tok=m.top_k, n_shared_experts=n_shared, n_group=1, topk_group=1,
                              routed_scaling_factor=1.0, norm_topk_prob=True)
    ref = DeepseekV3MoE(config).eval()
    with torch.no_grad():
        ref.gate.weight.copy_(m.gate.weight)
        ref.gate.e_score_correction_bias.copy_(m.gate.e_score_correction_bias)
        ref.experts.gate_up_proj.copy_(
            torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in m.experts]))
        ref.experts.down_proj.copy_(torch.stack([e.down_proj.weight for e in m.experts]))
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(ref.shared_experts, name).weight.copy_(getattr(m.shared_experts, name).weight)
    return ref


def test_sigmoid_router_with_bias_and_shared_experts_equals_deepseek_v3_layer():
    m = layer(n_experts=8, top_k=3, score="sigmoid", n_shared_experts=2, bias_update_rate=0.01).eval()
    with torch.no_grad():
        m.gate.e_score_correction_bias.copy_(torch.linspace(-0.3, 0.3, 8))  # a bias that changes choices
    ref = deepseek_reference(m, n_shared=2)
    x = inputs(n=30).reshape(2, 15, 16)
    with torch.no_grad():
        expected = ref(x)
        got = m(x)
        _, ref_weights, ref_experts = ref.gate(x)
    r = m.last_routing
    assert torch.equal(r.experts.sort(dim=-1).values, ref_experts.sort(dim=-1).values)
    assert (got - expected).abs().max().item() <= 1e-5
    # the bias chose the experts, but the weights are the unbiased sigmoid scores, renormalized
    biased = torch.topk(r.scores + m.gate.e_score_correction_bias, 3).indices
    unbiased = torch.topk(r.scores, 3).indices
    assert torch.equal(r.experts, biased) and not torch.equal(r.experts, unbiased)
    chosen = r.scores.gather(-1, r.experts)
    assert torch.allclose(r.weights, chosen / chosen.sum(-1, keepdim=True))


def test_bias_update_follows_the_deepseek_v3_rule():
    m = layer(bias_update_rate=0.1)
    m.gate.update_bias(torch.tensor([5, 1, 3, 3]))  # mean 3: overloaded down, underloaded up
    assert m.gate.e_score_correction_bias.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    assert not m.gate.e_score_correction_bias.requires_grad


def test_bias_balancing_evens_out_a_skewed_router():
    m = layer(seed=3, n_experts=4, top_k=1, score="sigmoid", bias_update_rate=0.02)
    with torch.no_grad():
        m.gate.weight[0] += 1.0  # expert 0 scores high for most tokens
    x = inputs(n=256, seed=4).abs()
    m.eval()
    with torch.no_grad():
        m(x)
    before = m.last_routing.load().max().item() / 64
    m.train()
    for _ in range(100):
        m(x)  # bias updates after every training batch (no gradient needed)
    m.eval()
    with torch.no_grad():
        m(x)
    after = m.last_routing.load().max().item() / 64
    assert before > 2.0 and after < 1.3  # busiest expert's load relative to a fair share


# --- dispatch -------------------------------------------------------------------------------------


def dense_reference(m: moe.MoEFeedForward, x: torch.Tensor, routing) -> torch.Tensor:
    """Every expert on every token, masked to the routed (and kept) pairs."""
    gates = torch.zeros(x.shape[0], m.n_experts)
    gates.scatter_(-1, routing.experts, routing.weights * routing.kept)
    all_outputs = torch.stack([e(x) for e in m.experts], dim=1)  # (N, n_experts, dim)
    out = (gates.unsqueeze(-1) * all_outputs).sum(dim=1)
    return out + (m.shared_experts(x) if m.shared_experts is not None else 0)


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=1), dict(top_k=4), dict(n_shared_experts=1),
                                    dict(capacity_factor=0.75), dict(score="sigmoid", normalize=False)])
def test_dispatch_equals_a_dense_masked_reference(kwargs):
    m = layer(**kwargs).eval()
    x = inputs()
    with torch.no_grad():
        got = m(x)
        expected = dense_reference(m, x, m.last_routing)
    assert (got - expected).abs().max().item() <= 1e-5


def test_dispatch_runs_each_expert_only_on_its_own_tokens():
    m = layer(n_experts=6, top_k=2).eval()
    seen = {}
    for e, expert in enumerate(m.experts):
        expert.register_forward_hook(lambda mod, args, out, e=e: seen.__setitem__(e, args[0].shape[0]))
    x = inputs(n=40)
    with torch.no_grad():
        m(x)
    load = m.last_routing.load()
    assert {e: n for e, n in seen.items()} == {e: int(n) for e, n in enumerate(load) if n > 0}
    assert sum(seen.values()) == 40 * 2  # N * k rows in total, not N * n_experts


def test_dispatch_gradients_equal_the_dense_reference():
    m = layer()
    x = inputs().requires_grad_()
    m.eval()
    m(x).pow(2).sum().backward()
    got = [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]
    m.zero_grad()
    x.grad = None
    routing = m.gate.route(x)
    dense_reference(m, x, routing).pow(2).sum().backward()
    expected = [p.grad for p in m.parameters()] + [x.grad]
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# --- capacity -------------------------------------------------------------------------------------


def simulate_capacity(experts: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Serve first choices of all tokens in order, then second choices, ...; a full expert refuses."""
    n, k = experts.shape
    used = [0] * n_experts
    kept = torch.zeros(n, k, dtype=torch.bool)
    for rank in range(k):
        for t in range(n):
            e = int(experts[t, rank])
            if used[e] < capacity:
                used[e] += 1
                kept[t, rank] = True
    return kept


def test_capacity_keeps_first_arrivals_and_drops_exactly_the_overflow():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0], [0, 2]])  # expert 0 is wanted 5 times
    kept = moe.capacity_mask(experts, n_experts=3, capacity=2)
    # first choices: tokens 0, 1 fill expert 0; tokens 2 and 4 overflow; token 3's first choice is 1.
    # second choices: expert 1 has token 3, takes token 0 (2 of 2) then refuses token 2; expert 2
    # takes tokens 1 and 4; expert 0 is full, so token 3's second choice is dropped.
    assert kept.tolist() == [[True, True], [True, True], [False, False], [True, False], [False, True]]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        experts = torch.stack([torch.randperm(5, generator=gen)[:2] for _ in range(30)])
        for capacity in (1, 5, 12, 30):
            assert torch.equal(moe.capacity_mask(experts, 5, capacity), simulate_capacity(experts, 5, capacity))


def test_capacity_factor_in_the_layer_counts_and_zeroes_dropped_pairs():
    m = layer(n_experts=4, top_k=2, capacity_factor=0.5).eval()
    x = inputs(n=32)
    with torch.no_grad():
        m(x)
    r = m.last_routing
    assert r.capacity == moe.expert_capacity(32, 4, 2, 0.5) == 8
    raw = m.gate.route(x)
    overflow = sum(max(0, int(n) - 8) for n in torch.bincount(raw.experts.reshape(-1), minlength=4))
    assert r.n_dropped == overflow > 0
    assert int(r.load().max()) <= 8
    assert torch.all(r.weights[~r.kept] == 0)
    m.capacity_factor = None
    with torch.no_grad():
        m(x)
    assert m.last_routing.n_dropped == 0


# --- auxiliary losses -----------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_load_balancing_loss_equals_transformers(top_k):
    logits = torch.randn(50, 6, generator=torch.Generator().manual_seed(top_k))
    scores = logits.softmax(-1)
    experts = torch.topk(scores, top_k).indices
    expected = load_balancing_loss_func((logits,), num_experts=6, top_k=top_k)
    assert moe.load_balancing_loss(scores, experts, 6).item() == pytest.approx(expected.item(), rel=1e-6)


def test_load_balancing_loss_formula_at_the_extremes():
    # Switch (top-1): uniform routing gives 1; everything on one expert with certainty gives n_experts
    n, e = 8, 4
    uniform = torch.full((n, e), 1 / e)
    spread = torch.arange(n).remainder(e).unsqueeze(-1)
    assert moe.load_balancing_loss(uniform, spread, e).item() == pytest.approx(1.0)
    collapsed = F.one_hot(torch.zeros(n, dtype=torch.long), e).float()
    assert moe.load_balancing_loss(collapsed, torch.zeros(n, 1, dtype=torch.long), e).item() == pytest.approx(e)


def test_router_z_loss_formula():
    assert moe.router_z_loss(torch.zeros(5, 4)).item() == pytest.approx(math.log(4) ** 2)
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    expected = ((math.log(math.e + math.e ** 2)) ** 2 + (math.log(1 + math.e ** -1)) ** 2) / 2
    assert moe.router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_auxiliary_losses_reach_the_gradients_without_changing_the_output():
    m = layer(aux_loss_coef=0.3, z_loss_coef=0.05).train()
    x = inputs()
    out = m(x)
    out.sum().backward()
    got = m.gate.weight.grad.clone()
    # reference: the same loss written out explicitly
    m.zero_grad()
    m.eval()
    routing = m.gate.route(x)
    explicit = dense_reference(m, x, routing).sum() + 0.3 * moe.load_balancing_loss(
        routing.scores, routing.experts, 4) + 0.05 * moe.router_z_loss(routing.logits)
    explicit.backward()
    assert torch.allclose(got, m.gate.weight.grad, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(out, m(x), atol=1e-6)  # the output is untouched
    assert set(m.last_aux_losses) == {"balance", "z"}


# --- the MoE Qwen against transformers' Qwen3-MoE -------------------------------------------------


def reference(config: QwenConfig, seed: int = 0) -> Qwen3MoeForCausalLM:
    torch.manual_seed(seed)
    hf = Qwen3MoeForCausalLM(Qwen3MoeConfig(**hf_interop.hf_moe_config_kwargs(config), attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_moe_logits_equal_transformers_qwen3_moe(name):
    config = CONFIGS[name]
    hf = reference(config)
    ours = hf_interop.from_transformers_moe(hf)
    assert all(isinstance(layer.mlp, moe.MoEFeedForward) for layer in ours.layers)
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.abs().max() > 1.0
    assert (got - expected).abs().max().item() <= 1e-5


def test_moe_weights_go_back_to_transformers():
    torch.manual_seed(3)
    ours = QwenModel(BASE.replace(tie_embeddings=False))
    ours.init_weights(std=0.2)
    hf = hf_interop.to_transformers_moe(ours)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-5
    assert set(hf_interop.split_hf_moe_state_dict(hf.state_dict())) == {f"model.{k}" if not k.startswith("lm_head") else k
                                                                  for k in ours.state_dict()}


def test_dense_config_keeps_the_dense_model():
    dense = QwenModel(BASE.replace(n_experts=0, moe_hidden_dim=None))
    assert all(type(layer.mlp) is SwiGLU for layer in dense.layers)
    assert not any("experts" in k or "gate.weight" in k for k in dense.state_dict())


def test_parameter_counts_match_the_built_model():
    for config in [*CONFIGS.values(), BASE.replace(n_shared_experts=1), BASE.replace(n_experts=0, moe_hidden_dim=None)]:
        model = QwenModel(config)
        counts = moe.parameter_counts(config)
        assert counts["total"] == model.num_parameters()
        if config.is_moe:
            unused = (config.n_experts - config.n_experts_per_token) * sum(
                p.numel() for p in model.layers[0].mlp.experts[0].parameters())
            assert counts["active"] == counts["total"] - config.n_layers * unused
        else:
            assert counts["active"] == counts["total"]


def test_fine_grained_keeps_parameters_and_compute():
    config = BASE.replace(n_shared_experts=1)
    fine = moe.fine_grained(config, 4)
    assert (fine.n_experts, fine.n_experts_per_token, fine.expert_hidden_dim) == (16, 8, 4)
    assert moe.parameter_counts(fine)["active"] - moe.parameter_counts(config)["active"] == \
        config.n_layers * (fine.n_experts - config.n_experts) * config.dim  # only the bigger router grows
    with pytest.raises(ValueError, match="m=3 does not divide"):
        moe.fine_grained(config, 3)


def test_moe_model_trains_and_reports_plain_cross_entropy():
    config = BASE.replace(router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    torch.manual_seed(0)
    model = QwenModel(config)
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(5))
    logits, loss = model(ids[:, :-1], ids[:, 1:])
    assert loss.item() == pytest.approx(F.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1)).item())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(15):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        assert model.layers[0].mlp.gate.weight.grad is not None
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < first - 1.0
    assert len(moe.routing_of(model)) == config.n_layers


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="top_k=5 exceeds n_experts=4"):
        moe.TopKRouter(8, 4, 5)
    with pytest.raises(ValueError, match="score='relu'"):
        moe.TopKRouter(8, 4, 2, score="relu")
    with pytest.raises(ValueError, match="capacity_factor=0"):
        moe.MoEFeedForward(8, 4, 2, 8, capacity_factor=0)
    with pytest.raises(ValueError, match="update_bias needs bias_update_rate > 0"):
        moe.TopKRouter(8, 4, 2).update_bias(torch.ones(4))
    with pytest.raises(ValueError, match="router_score"):
        hf_interop.hf_moe_config_kwargs(BASE.replace(router_score="sigmoid"))
    with pytest.raises(ValueError, match="n_experts_per_token=3 exceeds n_experts=2"):
        BASE.replace(n_experts=2, n_experts_per_token=3)
    with pytest.raises(ValueError, match="set n_experts > 0"):
        QwenConfig(n_shared_experts=1)


def test_expert_load_recorder_counts_every_training_pass():
    torch.manual_seed(0)
    model = QwenModel(BASE)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    with moe.ExpertLoadRecorder(model) as recorder:
        model.train()
        model(ids)
        model(ids)
        model.eval()
        with torch.no_grad():
            model(ids)  # not recorded: evaluation
    loads = recorder.loads()
    assert loads.shape == (2, BASE.n_layers, BASE.n_experts)
    assert torch.all(loads.sum(-1) == 2 * 10 * BASE.n_experts_per_token)
    assert torch.equal(loads[-1, 1], moe.routing_of(model)[1].load())  # eval pass routes the same tokens alike
    assert moe.load_imbalance(torch.tensor([[5, 5, 5, 5], [20, 0, 0, 0]])).tolist() == [1.0, 4.0]
    with pytest.raises(ValueError, match="no MoE layers"):
        moe.ExpertLoadRecorder(QwenModel(BASE.replace(n_experts=0, moe_hidden_dim=None)))
