"""The model against transformers' Qwen3ForCausalLM: same weights, same logits, in both directions."""

import json

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from slmbook.config import QwenConfig
from slmbook.hf_interop import (
    config_from_hf,
    from_transformers,
    hf_config_kwargs,
    hf_name,
    load_hf_state_dict,
    to_hf_state_dict,
    to_transformers,
)
from slmbook.kv_cache import KVCache
from slmbook.pretrained import from_pretrained
from slmbook.qwen import QwenModel, TransformerBlock

BASE = QwenConfig(vocab_size=97, context_length=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                  rope_theta=10_000.0)
CONFIGS = {
    "mha-tied": BASE.replace(n_kv_heads=4),
    "gqa-untied": BASE.replace(tie_embeddings=False),
    "mqa-tied": BASE.replace(n_kv_heads=1),
    # head_dim * n_heads != dim, as in Qwen3-0.6B (16 x 128 = 2048 > 1024)
    "gqa-wide-heads-untied": BASE.replace(n_heads=4, n_kv_heads=2, head_dim=16, tie_embeddings=False),
}


def reference(config: QwenConfig, seed: int = 0) -> Qwen3ForCausalLM:
    """A random transformers Qwen3 (eager attention, float32) with every weight, norms included,
    drawn at a scale where a wrong mapping cannot hide."""
    torch.manual_seed(seed)
    hf = Qwen3ForCausalLM(Qwen3Config(**hf_config_kwargs(config), attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return hf


def tokens(config, batch=2, length=20, seed=1):
    return torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_logits_equal_transformers(name, attn_impl):
    config = CONFIGS[name]
    hf = reference(config)
    ours = from_transformers(hf, attn_impl=attn_impl)
    ids = tokens(config)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.abs().max() > 1.0  # a meaningful comparison, not two near-zero tensors
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("preallocate", [True, False])
def test_logits_with_kv_cache_equal_transformers(name, preallocate):
    """Prefill 8 tokens, then 3, then one at a time: every position's logits equal the reference's
    full-sequence logits."""
    config = CONFIGS[name]
    hf = reference(config)
    ours = from_transformers(hf)
    ids = tokens(config)
    cache = KVCache.for_model(ours, batch_size=2, max_tokens=ids.shape[1] if preallocate else None)
    with torch.no_grad():
        expected = hf(ids).logits
        chunks = [ours(ids[:, :8], kv_cache=cache), ours(ids[:, 8:11], kv_cache=cache)]
        chunks += [ours(ids[:, t:t + 1], kv_cache=cache) for t in range(11, ids.shape[1])]
    got = torch.cat(chunks, dim=1)
    assert cache.length == ids.shape[1]
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["gqa-untied", "mqa-tied"])
def test_weights_go_back_to_transformers(name):
    config = CONFIGS[name]
    torch.manual_seed(3)
    ours = QwenModel(config)
    ours.init_weights(std=0.2)
    hf = to_transformers(ours)
    assert set(to_hf_state_dict(ours)) == set(hf.state_dict())
    ids = tokens(config)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-5


def test_loss_equals_transformers_loss():
    config = CONFIGS["gqa-untied"]
    hf = reference(config)
    ours = from_transformers(hf)
    ids = tokens(config)
    with torch.no_grad():
        expected = hf(ids, labels=ids).loss  # transformers shifts the labels inside
        _, loss = ours(ids[:, :-1], targets=ids[:, 1:])
        targets = ids[:, 1:].clone()
        targets[:, :5] = -100
        _, masked = ours(ids[:, :-1], targets=targets)
        hf_labels = ids.clone()
        hf_labels[:, 1:6] = -100
        expected_masked = hf(ids, labels=hf_labels).loss
    assert abs(loss.item() - expected.item()) <= 1e-5
    assert abs(masked.item() - expected_masked.item()) <= 1e-5


def test_attention_weights_equal_transformers():
    config = CONFIGS["gqa-untied"]
    hf = reference(config)
    ours = from_transformers(hf)
    ids = tokens(config, length=9)
    with torch.no_grad():
        expected = hf(ids, output_attentions=True).attentions
        logits, attentions = ours(ids, return_attention=True)
    assert len(attentions) == config.n_layers
    for got, ref in zip(attentions, expected, strict=True):
        assert got.shape == (2, config.n_heads, 9, 9)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert ours.attn_impl == "sdpa"  # asking for weights does not flip the model's switch


def test_from_pretrained_reads_a_hugging_face_folder(tmp_path):
    config = CONFIGS["gqa-wide-heads-untied"]
    hf = reference(config)
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors, as on the Hub
    assert list(tmp_path.glob("*.safetensors"))
    ours = from_pretrained(tmp_path)
    assert ours.config == config
    ids = tokens(config)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-5


def test_from_pretrained_tied_checkpoint_without_lm_head(tmp_path):
    """Qwen3-0.6B's files hold no lm_head.weight (it is the embedding); the older config format
    keeps rope_theta at the top level and names the dtype torch_dtype."""
    from safetensors.torch import save_file

    config = CONFIGS["mqa-tied"]
    hf = reference(config)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    hf_json = {**hf_config_kwargs(config), "model_type": "qwen3", "rope_scaling": None, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(hf_json))
    ours = from_pretrained(tmp_path, dtype="float32", context_length=16)
    assert ours.config == config.replace(context_length=16)
    assert ours.lm_head.weight is ours.embed_tokens.weight
    ids = tokens(config, length=16)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-5
    assert from_pretrained(tmp_path).config.dtype == "bfloat16"


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**hf_config_kwargs(BASE), "model_type": "qwen3"}))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("change, match", [
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(use_sliding_window=True), "use_sliding_window=True"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "RoPE scaling"),
    (dict(model_type="llama"), "model_type='llama'"),
    (dict(torch_dtype="int8"), "dtype='int8'"),
])
def test_unsupported_checkpoints_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf({**hf_config_kwargs(BASE), "model_type": "qwen3", **change})


def test_mismatched_state_dicts_are_refused():
    model = QwenModel(CONFIGS["gqa-untied"])
    good = to_hf_state_dict(model)
    with pytest.raises(ValueError, match="missing \\['lm_head.weight'\\]"):
        load_hf_state_dict(model, {k: v for k, v in good.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match="shape"):
        load_hf_state_dict(model, {**good, "model.norm.weight": torch.ones(5)})
    tied = QwenModel(CONFIGS["mha-tied"])
    with pytest.raises(ValueError, match="tie_embeddings=True"):
        load_hf_state_dict(tied, {**to_hf_state_dict(tied), "lm_head.weight": torch.zeros(97, 32)})


def test_parameter_names_are_transformers_names():
    config = CONFIGS["gqa-untied"]
    ours = QwenModel(config)
    hf = Qwen3ForCausalLM(Qwen3Config(**hf_config_kwargs(config)))
    assert {hf_name(n) for n, _ in ours.named_parameters()} == {n for n, _ in hf.named_parameters()}
    assert set(dict(ours.state_dict())) == {k.removeprefix("model.") for k in hf.state_dict()}  # no RoPE tables


def _expected_parameters(c: QwenConfig) -> int:
    attention = c.dim * c.n_heads * c.head_dim * 2 + c.dim * c.n_kv_heads * c.head_dim * 2 + 2 * c.head_dim
    block = attention + 3 * c.dim * c.hidden_dim + 2 * c.dim
    return c.vocab_size * c.dim * (1 if c.tie_embeddings else 2) + c.n_layers * block + c.dim


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_num_parameters_counts_by_formula_and_like_transformers(name):
    config = CONFIGS[name]
    ours = QwenModel(config)
    assert ours.num_parameters() == _expected_parameters(config)
    assert ours.num_parameters() == reference(config).num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == _expected_parameters(config) - config.vocab_size * config.dim


def test_init_weights():
    config = QwenConfig(vocab_size=500, dim=128, n_layers=8, n_heads=4, n_kv_heads=2, hidden_dim=384)
    torch.manual_seed(0)
    model = QwenModel(config)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert abs(model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert abs(model.layers[0].mlp.up_proj.weight.std().item() - 0.02) < 0.002
    assert abs(model.layers[0].self_attn.o_proj.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02/sqrt(2*8)
    assert torch.all(model.layers[3].input_layernorm.weight == 1)
    model.init_weights(residual_std=0.0)
    assert torch.all(model.layers[2].mlp.down_proj.weight == 0)
    ids = tokens(config)
    # zero-initialised branches: each block is the identity, and gradients still reach them
    _, loss = model(ids, targets=ids)
    loss.backward()
    assert model.layers[2].mlp.down_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="std=0"):
        model.init_weights(std=0)


def test_model_errors():
    model = QwenModel(BASE)
    with pytest.raises(ValueError, match="context_length=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_impl='flash'"):
        model.attn_impl = "flash"
    with pytest.raises(ValueError, match="attn_impl='flash'"):
        QwenModel(BASE, attn_impl="flash")
    with pytest.raises(TypeError, match="QwenConfig"):
        QwenModel({"dim": 32})
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="norm_position='middle'"):
        TransformerBlock(BASE, norm_position="middle")
    cache = KVCache.for_model(model, max_tokens=32)
    model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="after 30 cached"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_causal_model_gradient_ignores_later_tokens():
    config = CONFIGS["gqa-untied"]
    model = from_transformers(reference(config))
    ids = tokens(config, batch=1, length=12)
    captured = {}

    def keep_embeddings(module, inputs, out):
        out.retain_grad()
        captured["x"] = out

    model.embed_tokens.register_forward_hook(keep_embeddings)
    t = 5
    model(ids)[0, t].sum().backward()
    per_position = captured["x"].grad[0].abs().sum(-1)
    assert torch.all(per_position[t + 1:] == 0)
    assert torch.all(per_position[: t + 1] > 0)


def test_forward_compiles_as_one_graph():
    """No graph breaks (no .item(), no data-dependent branches) in forward + loss, both kernels."""
    model = QwenModel(BASE)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    ids = tokens(BASE, length=16)
    logits, loss = compiled(ids, ids)
    loss.backward()
    torch.testing.assert_close(logits, model(ids))
    model.attn_impl = "manual"
    torch.testing.assert_close(compiled(ids, ids)[0], logits, atol=1e-5, rtol=0)


def test_bfloat16_model_runs_in_bfloat16():
    config = BASE.replace(dtype="bfloat16")
    model = QwenModel(config)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.rope.cos.dtype == torch.float32
    hf = to_transformers(model)
    ids = tokens(config)
    with torch.no_grad():
        got, ref = model(ids), hf(ids).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=0)


def test_qwen3_0_6b_config_json_maps_to_the_preset():
    """The fields of Qwen/Qwen3-0.6B's published config.json give exactly slmbook's QWEN3_0_6B shape."""
    from slmbook.config import QWEN3_0_6B

    qwen3_0_6b_json = {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936,
    }
    assert config_from_hf(qwen3_0_6b_json) == QWEN3_0_6B
    assert config_from_hf(qwen3_0_6b_json, dtype="float32", context_length=4096) == QWEN3_0_6B.replace(
        dtype="float32", context_length=4096)


def test_names_moved_out_of_qwen_say_where_they_went():
    import slmbook.qwen

    with pytest.raises(AttributeError, match=r"slmbook\.pretrained\.from_pretrained"):
        getattr(slmbook.qwen, "from_pretrained")  # noqa: B009 (the attribute access is what is tested)
    with pytest.raises(AttributeError, match=r"slmbook\.hf_interop\.to_transformers"):
        getattr(slmbook.qwen, "to_transformers")  # noqa: B009
