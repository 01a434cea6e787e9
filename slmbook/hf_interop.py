"""Our models and Hugging Face `transformers`' Qwen3 and Qwen3-MoE, both ways (chapters 11 and 13).

Everything that knows transformers' names lives here, for the dense model and the mixture of experts:
- parameter names: ours are Qwen3ForCausalLM's minus its "model." prefix (`hf_name`, `our_name`), so a
  state dict converts by renaming (`to_hf_state_dict`, `load_hf_state_dict`, which checks every name and
  shape);
- configs: `config_from_hf` / `hf_config_kwargs` (Qwen3Config), `config_from_hf_moe` /
  `hf_moe_config_kwargs` (Qwen3MoeConfig); what our model does not implement is refused, not approximated;
- whole models: `from_transformers` / `to_transformers` and their `_moe` twins. transformers keeps the
  experts of a layer fused in memory (gate_up_proj, down_proj) while its checkpoint files, and our
  layers, hold one tensor per expert: `to_hf_moe_state_dict` and `split_hf_moe_state_dict` convert.

The tests prove the logits of both directions equal to transformers' to 1e-5 in float32. Loading a real
checkpoint folder or hub repository (`from_pretrained`) is slmbook/pretrained.py's job, on top of these.
"""

from __future__ import annotations

import torch
from torch import nn

from slmbook.config import QwenConfig
from slmbook.dtypes import torch_dtype
from slmbook.qwen import QwenModel

# ------------------------------------------------------------------------------------------------
# transformers' Qwen3: names, configs and checkpoints
# ------------------------------------------------------------------------------------------------


def hf_name(name: str) -> str:
    """Our parameter name -> transformers' Qwen3ForCausalLM name (the one place they differ)."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def our_name(hf: str) -> str:
    """transformers' Qwen3ForCausalLM parameter name -> ours."""
    return hf.removeprefix("model.")


def to_hf_state_dict(model: QwenModel) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (lm_head.weight included even when tied, as HF does)."""
    return {hf_name(k): v for k, v in model.state_dict().items()}


def load_hf_state_dict(model: QwenModel, hf_state: dict[str, torch.Tensor]) -> QwenModel:
    """Load transformers-named weights into `model` (strict: every weight present, none unknown).

    A tied model needs only model.embed_tokens.weight (Qwen3-0.6B's files hold no lm_head); if the
    checkpoint also has lm_head.weight it must equal the embeddings.
    """
    ours = {our_name(k): v for k, v in hf_state.items()}
    if model.config.tie_embeddings and "lm_head.weight" in ours:
        head = ours.pop("lm_head.weight")
        embed = ours.get("embed_tokens.weight")
        if embed is not None and not torch.equal(head.to(embed.dtype), embed):
            raise ValueError("the checkpoint's lm_head.weight differs from model.embed_tokens.weight, "
                             "but the config has tie_embeddings=True: set tie_embeddings=False to load it")
    expected = set(model.state_dict())
    if model.config.tie_embeddings:
        expected.discard("lm_head.weight")
    missing, unknown = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or unknown:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:8]}, unexpected {unknown[:8]}")
    for name, tensor in ours.items():
        target = model.get_parameter(name)
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(f"{hf_name(name)} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(target.shape)}")
    with torch.no_grad():
        for name, tensor in ours.items():
            model.get_parameter(name).copy_(tensor)
    return model


def hf_config_dict(hf_config) -> dict:
    """The fields of a transformers config object, or the dict of a config.json as it is."""
    if isinstance(hf_config, dict):
        return hf_config
    if not callable(getattr(hf_config, "to_dict", None)):
        raise TypeError(f"hf_config={type(hf_config).__name__}: expected a transformers config or the dict of "
                        "its config.json")
    return hf_config.to_dict()


def require_hf_keys(c: dict, keys, what: str) -> None:
    """A ValueError naming every key of `keys` that the transformers config `c` lacks (or sets to null)."""
    missing = [k for k in keys if c.get(k) is None]
    if missing:
        raise ValueError(f"hf_config is missing {missing}, needed to build {what}; it has {sorted(c)}")


def config_from_hf(hf_config, dtype=None, context_length: int | None = None) -> QwenConfig:
    """A QwenConfig from a transformers Qwen3 config (a Qwen3Config or the dict of config.json).

    Refuses what our model does not implement (other activations, attention biases, sliding
    windows, RoPE scaling) instead of loading a model that would silently differ.
    """
    c = hf_config_dict(hf_config)
    if c.get("model_type", "qwen3") != "qwen3":
        raise ValueError(f"model_type={c.get('model_type')!r}: only 'qwen3' checkpoints are supported")
    require_hf_keys(c, ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                        "rms_norm_eps"] + ([] if context_length else ["max_position_embeddings"]), "a Qwen3 model")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={c['hidden_act']!r}: our SwiGLU uses 'silu'")
    if c.get("attention_bias", False):
        raise ValueError("attention_bias=True: our attention projections have no bias")
    if c.get("use_sliding_window", False):
        raise ValueError("use_sliding_window=True: our attention is full causal attention")
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if scaling or rope_type != "default":
        raise ValueError(f"RoPE scaling {scaling or rope!r}: only plain RoPE ('default') is supported")
    theta = rope.get("rope_theta", c.get("rope_theta", 10_000.0))
    n_heads = c["num_attention_heads"]
    return QwenConfig(
        vocab_size=c["vocab_size"],
        context_length=context_length or c["max_position_embeddings"],
        dim=c["hidden_size"],
        n_layers=c["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=c.get("num_key_value_heads") or n_heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // n_heads,
        hidden_dim=c["intermediate_size"],
        rope_theta=float(theta) if isinstance(theta, int) and not isinstance(theta, bool) else theta,
        norm_eps=c["rms_norm_eps"],
        tie_embeddings=c.get("tie_word_embeddings", False),
        qk_norm=True,
        dtype=str(torch_dtype(dtype or c.get("dtype") or c.get("torch_dtype") or "float32")).removeprefix("torch."),
    )


def hf_config_kwargs(config: QwenConfig) -> dict:
    """Keyword arguments for transformers.Qwen3Config describing the same model."""
    if not config.qk_norm:
        raise ValueError("qk_norm=False has no transformers Qwen3 equivalent (Qwen3 always normalises q and k)")
    return dict(
        vocab_size=config.vocab_size, max_position_embeddings=config.context_length, hidden_size=config.dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, intermediate_size=config.hidden_dim,
        rope_theta=config.rope_theta, rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu", attention_bias=False, use_sliding_window=False,
    )


def from_transformers(hf_model, attn_impl: str = "sdpa") -> QwenModel:
    """Our model with the weights of a transformers Qwen3ForCausalLM."""
    dtype = next(hf_model.parameters()).dtype
    model = QwenModel(config_from_hf(hf_model.config, dtype=dtype), attn_impl=attn_impl)
    return load_hf_state_dict(model, hf_model.state_dict())


def to_transformers(model: QwenModel, attn_implementation: str = "eager"):
    """A transformers Qwen3ForCausalLM with our model's weights (needs `transformers`)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_config = Qwen3Config(**hf_config_kwargs(model.config), attn_implementation=attn_implementation)
    return build_transformers_model(Qwen3ForCausalLM, hf_config, to_hf_state_dict(model), model.config.dtype)


def build_transformers_model(model_class, hf_config, hf_state: dict[str, torch.Tensor], dtype):
    """`model_class(hf_config)` in `dtype`, eval mode, holding `hf_state`; every weight must be taken."""
    hf_model = model_class(hf_config).to(torch_dtype(dtype)).eval()
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"transformers model did not take every weight: missing {missing}, unexpected {unexpected}")
    return hf_model


# ------------------------------------------------------------------------------------------------
# transformers' Qwen3-MoE
# ------------------------------------------------------------------------------------------------


def hf_moe_config_kwargs(config: QwenConfig) -> dict:
    """Keyword arguments for transformers.Qwen3MoeConfig describing the same model.

    Qwen3-MoE routes with a softmax, has no shared experts, no capacity limit and no balance bias:
    configurations using those are refused rather than converted into a different model.
    """
    if not config.is_moe:
        raise ValueError("config.n_experts=0: a dense config maps to transformers.Qwen3Config (`hf_config_kwargs`)")
    unsupported = {"router_score": config.router_score != "softmax", "n_shared_experts": config.n_shared_experts > 0,
                   "capacity_factor": config.capacity_factor is not None,
                   "router_bias_update_rate": config.router_bias_update_rate > 0}
    if any(unsupported.values()):
        raise ValueError(f"{[k for k, v in unsupported.items() if v]}: transformers' Qwen3-MoE has no equivalent "
                         "(it routes with a softmax, without shared experts, capacity or balance bias)")
    values = hf_config_kwargs(config)
    values.update(num_experts=config.n_experts, num_experts_per_tok=config.n_experts_per_token,
                  moe_intermediate_size=config.expert_hidden_dim, norm_topk_prob=config.router_normalize,
                  decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=config.router_aux_loss_coef)
    return values


def _expert_keys(layer: str, e: int) -> tuple[str, str, str]:
    return tuple(f"{layer}.mlp.experts.{e}.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj"))


def to_hf_moe_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under the names and shapes of transformers' in-memory Qwen3MoeForCausalLM, whose
    experts are fused: gate_up_proj (n_experts, 2 * hidden, dim) and down_proj (n_experts, dim, hidden)."""
    state = to_hf_state_dict(model)
    config = model.config
    for i in range(config.n_layers):
        layer = f"model.layers.{i}"
        gates, ups, downs = [], [], []
        for e in range(config.n_experts):
            g, u, dn = (state.pop(key) for key in _expert_keys(layer, e))
            gates.append(g), ups.append(u), downs.append(dn)
        state[f"{layer}.mlp.experts.gate_up_proj"] = torch.cat([torch.stack(gates), torch.stack(ups)], dim=1)
        state[f"{layer}.mlp.experts.down_proj"] = torch.stack(downs)
    return state


def split_hf_moe_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' fused expert tensors -> one tensor per expert and projection (the names of the
    Qwen3-MoE checkpoint files, which `load_hf_state_dict` then loads as they are)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            layer = name.removesuffix(".mlp.experts.gate_up_proj")
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                g, u, _ = _expert_keys(layer, e)
                out[g], out[u] = gate[e], up[e]
        elif name.endswith(".mlp.experts.down_proj"):
            layer = name.removesuffix(".mlp.experts.down_proj")
            for e in range(tensor.shape[0]):
                out[_expert_keys(layer, e)[2]] = tensor[e]
        else:
            out[name] = tensor
    return out


def config_from_hf_moe(hf_config, dtype=None, context_length: int | None = None) -> QwenConfig:
    """A QwenConfig from a transformers Qwen3MoeConfig (every layer sparse)."""
    c = hf_config_dict(hf_config)
    if c.get("model_type") != "qwen3_moe":
        raise ValueError(f"model_type={c.get('model_type')!r}: expected 'qwen3_moe'")
    require_hf_keys(c, ["num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob"], "a Qwen3-MoE model")
    if c.get("num_experts") is None and c.get("num_local_experts") is None:
        raise ValueError(f"hf_config is missing 'num_experts' (or 'num_local_experts'), needed to build a Qwen3-MoE "
                         f"model; it has {sorted(c)}")
    if c.get("mlp_only_layers") or c.get("decoder_sparse_step", 1) != 1:
        raise ValueError("mlp_only_layers / decoder_sparse_step != 1: our MoE model uses experts in every layer")
    dense = config_from_hf({**c, "model_type": "qwen3"}, dtype=dtype, context_length=context_length)
    n_experts = c["num_experts"] if c.get("num_experts") is not None else c["num_local_experts"]  # json vs to_dict()
    return dense.replace(n_experts=n_experts, n_experts_per_token=c["num_experts_per_tok"],
                         moe_hidden_dim=c["moe_intermediate_size"], router_normalize=c["norm_topk_prob"],
                         router_aux_loss_coef=c.get("router_aux_loss_coef", 0.0))


def from_transformers_moe(hf_model, attn_impl: str = "sdpa"):
    """Our model with the weights of a transformers Qwen3MoeForCausalLM."""
    dtype = next(hf_model.parameters()).dtype
    model = QwenModel(config_from_hf_moe(hf_model.config, dtype=dtype), attn_impl=attn_impl)
    return load_hf_state_dict(model, split_hf_moe_state_dict(hf_model.state_dict()))


def to_transformers_moe(model, attn_implementation: str = "eager"):
    """A transformers Qwen3MoeForCausalLM with our MoE model's weights."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    hf_config = Qwen3MoeConfig(**hf_moe_config_kwargs(model.config), attn_implementation=attn_implementation)
    return build_transformers_model(Qwen3MoeForCausalLM, hf_config, to_hf_moe_state_dict(model), model.config.dtype)
