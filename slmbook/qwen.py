"""The Qwen3-style decoder, assembled from the book's parts (chapters 7-11).

    token ids -> embed_tokens -> n_layers x TransformerBlock -> norm (RMSNorm) -> lm_head -> logits

    TransformerBlock (pre-norm):  x = x + self_attn(input_layernorm(x))            # chapter 8, 9
                                  x = x + mlp(post_attention_layernorm(x))          # chapter 10

with RoPE (chapter 7) inside attention, grouped-query attention with per-head QK-RMSNorm, SwiGLU, and
the output head tied to the embedding table (one matrix for reading and writing tokens).

Parameter names are those of `transformers`' Qwen3ForCausalLM minus its "model." prefix, and the one
function `hf_name` converts; so a real Qwen3 checkpoint (a local folder with config.json and
*.safetensors) loads with `from_pretrained`, and the tests prove the logits equal to `transformers`'
to 1e-5 in float32.

Built for training too: the layers have no data-dependent Python branches and no `.item()` (the one
read of the device is the entry check of the token ids, left out under torch.compile), the RoPE
tables are non-persistent buffers sized to the context, attention runs through
`F.scaled_dot_product_attention(is_causal=True)` unless `attn_impl="manual"`, and
`model(input_ids, targets)` returns (logits, loss) with the loss from `F.cross_entropy`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slmbook.attention import GroupedQueryAttention, check_attn_impl
from slmbook.config import QwenConfig
from slmbook.dtypes import torch_dtype
from slmbook.feedforward import SwiGLU
from slmbook.moe import MoEFeedForward
from slmbook.norms import RMSNorm
from slmbook.positional import RotaryEmbedding

NORM_POSITIONS = ("pre", "post")


class TransformerBlock(nn.Module):
    """One decoder layer: attention then feed-forward, each inside a residual connection.

    Qwen is pre-norm with residuals (the defaults). Chapter 10 switches them to see why:
    `norm_position="post"` normalises after adding (the original Transformer: x = norm(x + f(x))),
    and `residual=False` drops the skip connections (x = f(norm(x))). The norm layers keep their
    Qwen names in every variant.
    """

    def __init__(self, config: QwenConfig, layer_idx: int = 0, attn_impl: str = "sdpa",
                 norm_position: str = "pre", residual: bool = True):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position={norm_position!r}: allowed {NORM_POSITIONS}")
        dtype = torch_dtype(config.dtype, "config.dtype")
        self.norm_position, self.residual = norm_position, residual
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps, dtype=dtype)
        self.self_attn = GroupedQueryAttention(
            config.dim, config.n_heads, config.n_kv_heads, config.head_dim, qk_norm=config.qk_norm,
            norm_eps=config.norm_eps, attn_impl=attn_impl, layer_idx=layer_idx, dtype=dtype,
        )
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps, dtype=dtype)
        self.mlp = (MoEFeedForward.from_config(config, dtype=dtype) if config.is_moe  # chapter 13
                    else SwiGLU(config.dim, config.hidden_dim, dtype=dtype))

    def _sublayer(self, x, norm, f):
        if self.norm_position == "pre":
            out = f(norm(x))
            return (x + out) if self.residual else out
        return norm(x + f(x)) if self.residual else norm(f(x))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache=None,
                return_attention: bool = False):
        weights = []

        def attend(h):
            if not return_attention:
                return self.self_attn(h, cos, sin, kv_cache)
            out, w = self.self_attn(h, cos, sin, kv_cache, return_weights=True)
            weights.append(w)
            return out

        x = self._sublayer(x, self.input_layernorm, attend)
        x = self._sublayer(x, self.post_attention_layernorm, self.mlp)
        return (x, weights[0]) if return_attention else x


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None) -> None:
    """A ValueError naming the first entry of `ids` that is not a token id (0 <= id < vocab_size);
    `ignore_index` (the loss's -100) is allowed too. Costs one min/max (one device sync on a GPU):
    an id outside the table would otherwise surface as an IndexError from inside torch, or on a GPU as
    a device-side assert that poisons the whole process."""
    if ids.numel() == 0 or ids.device.type == "meta":
        return
    valid = ids if ignore_index is None else ids.masked_fill(ids == ignore_index, 0)
    low, high = torch.stack(torch.aminmax(valid)).tolist()
    if low >= 0 and high < vocab_size:
        return
    bad = (valid < 0) | (valid >= vocab_size)
    position = tuple(bad.nonzero()[0].tolist())
    also = f" or {ignore_index} (ignored)" if ignore_index is not None else ""
    raise ValueError(f"{name}[{', '.join(map(str, position))}]={ids[position].item()} is not a token id: allowed "
                     f"0 <= id < vocab_size={vocab_size}{also} ({int(bad.sum())} of {ids.numel()} entries are outside)")


def _tracing(ids: torch.Tensor) -> bool:
    """True while torch.compile traces the model or a CUDA graph records it: no values can be read then."""
    return torch.compiler.is_compiling() or (ids.is_cuda and torch.cuda.is_current_stream_capturing())


class QwenModel(nn.Module):
    """A Qwen3-style causal language model of shape `config` (see slmbook/config.py).

    `model(input_ids)` -> logits (B, T, vocab); `model(input_ids, targets)` -> (logits, loss).
    `return_attention=True` appends the per-layer attention weights, each (B, n_heads, T, T_keys),
    computed on the manual path. `attn_impl` ("sdpa" or "manual") can be set on a built model.

    `forward` is the entry point, so it checks that every id is in [0, vocab_size) (and every target, or
    -100), skipped while torch.compile traces it. The check reads one min/max, which on a GPU waits for
    the device; a loop whose ids were already checked (the Trainer's token files are scanned when they
    are opened) sets `check_ids = False` to keep its steps free of that wait.
    """

    check_ids: bool = True

    def __init__(self, config: QwenConfig, attn_impl: str = "sdpa", norm_position: str = "pre",
                 residual: bool = True):
        super().__init__()
        if not isinstance(config, QwenConfig):
            raise TypeError(f"config={config!r}: expected a slmbook.config.QwenConfig")
        check_attn_impl(attn_impl)
        self.config = config
        dtype = torch_dtype(config.dtype, "config.dtype")
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(config, i, attn_impl, norm_position, residual) for i in range(config.n_layers)
        )
        self.norm = RMSNorm(config.dim, config.norm_eps, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False, device="meta", dtype=dtype)
            self.lm_head.weight = self.embed_tokens.weight  # one matrix reads and writes tokens
        else:
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False, dtype=dtype)
        self.rope = RotaryEmbedding(config.head_dim, config.context_length, config.rope_theta)
        self.init_weights()

    # -- attention implementation switch ---------------------------------------------------------
    @property
    def attn_impl(self) -> str:
        return self.layers[0].self_attn.attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        check_attn_impl(value)
        for layer in self.layers:
            layer.self_attn.attn_impl = value

    # -- initialisation and counting ---------------------------------------------------------------
    def init_weights(self, std: float = 0.02, residual_std: float | None = None) -> None:
        """Normal(0, std) for embeddings and every linear layer; norms start at 1.

        The two projections that write into the residual stream (o_proj and down_proj) get
        `residual_std`, by default std / sqrt(2 * n_layers) (GPT-2's rule): 2 * n_layers branches
        add up in the stream, so each should start small for the sum to keep unit scale. Setting
        residual_std=0 zero-initialises those projections, so every block starts as the identity
        (gradients still flow: the other weights are random, so o_proj and down_proj get non-zero
        gradients at the first step). With tied embeddings the shared matrix is initialised once.
        """
        if not std > 0:
            raise ValueError(f"std={std!r}: must be > 0")
        if residual_std is None:
            residual_std = std / math.sqrt(2 * self.config.n_layers)
        if residual_std < 0:
            raise ValueError(f"residual_std={residual_std!r}: must be >= 0")
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, nn.Linear):
                    if module.weight is self.embed_tokens.weight:
                        continue  # the tied head: initialised as the embedding
                    scale = residual_std if name.endswith(("o_proj", "down_proj")) else std
                    if scale > 0:
                        nn.init.normal_(module.weight, 0.0, scale)
                    else:
                        nn.init.zeros_(module.weight)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, 0.0, std)
                elif isinstance(module, RMSNorm):
                    nn.init.ones_(module.weight)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Trainable parameters, a tied matrix counted once. `exclude_embeddings` leaves out the
        token-embedding table (the convention of scaling laws; an untied lm_head stays counted)."""
        unique = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in unique.values())
        if exclude_embeddings:
            total -= self.embed_tokens.weight.numel()
        return total

    # -- forward -----------------------------------------------------------------------------------
    def forward_hidden(self, input_ids: torch.Tensor, kv_cache=None, return_attention: bool = False):
        """Final normalised hidden states (B, T, dim): everything but the output head.

        With a KV cache the tokens are placed after the `kv_cache.length` already stored (a static cache
        gives their positions as a device tensor, so that the step can be recorded as a CUDA graph).
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype not in (
                torch.int64, torch.int32):
            raise ValueError(
                f"input_ids must be an integer tensor (torch.int64 or torch.int32) of shape (batch, tokens); got "
                f"{type(input_ids).__name__} {getattr(input_ids, 'dtype', '')} {tuple(getattr(input_ids, 'shape', ()))}"
            )
        start = 0 if kv_cache is None else kv_cache.length
        seq = input_ids.shape[1]
        if start + seq > self.config.context_length:
            raise ValueError(
                f"{seq} tokens" + (f" after {start} cached" if start else "")
                + f" exceed the model's context_length={self.config.context_length}"
            )
        if kv_cache is not None and kv_cache.static:  # positions from the device: no Python int in the step
            positions = kv_cache.begin(seq)
            cos, sin = self.rope.cos[positions], self.rope.sin[positions]
        else:
            cos, sin = self.rope.cos_sin(start, seq)
        x = self.embed_tokens(input_ids)
        attentions = []
        for layer in self.layers:
            if return_attention:
                x, w = layer(x, cos, sin, kv_cache, return_attention=True)
                attentions.append(w)
            else:
                x = layer(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, kv_cache=None,
                return_attention: bool = False):
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64:
                raise ValueError(f"targets must be a torch.int64 tensor of token ids (or -100 to ignore); got "
                                 f"{type(targets).__name__} {getattr(targets, 'dtype', '')}")
            if targets.shape != getattr(input_ids, "shape", None):
                raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape "
                                 f"{tuple(getattr(input_ids, 'shape', ()))}")
        if self.check_ids and isinstance(input_ids, torch.Tensor) and not _tracing(input_ids):
            self._check_ids(input_ids, targets)
        hidden = self.forward_hidden(input_ids, kv_cache, return_attention)
        hidden, attentions = hidden if return_attention else (hidden, None)
        logits = self.lm_head(hidden)
        out = (logits,)
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
            out = (logits, loss)
        if return_attention:
            out = (*out, attentions)
        return out[0] if len(out) == 1 else out

    def _check_ids(self, input_ids: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Both range checks of `forward` with a single read of the device (min and max of each)."""
        if input_ids.dtype not in (torch.int64, torch.int32) or input_ids.numel() == 0 or input_ids.device.type == "meta":
            return  # forward_hidden refuses the wrong dtype; nothing to read in an empty or meta tensor
        vocab = self.config.vocab_size
        if targets is None:
            return check_token_ids("input_ids", input_ids, vocab)
        ignored = targets.masked_fill(targets == -100, 0)
        bounds = torch.stack([v.long() for v in (*torch.aminmax(input_ids), *torch.aminmax(ignored))]).tolist()
        if bounds[0] < 0 or bounds[1] >= vocab:
            check_token_ids("input_ids", input_ids, vocab)
        if bounds[2] < 0 or bounds[3] >= vocab:
            check_token_ids("targets", targets, vocab, ignore_index=-100)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """Continue `input_ids`; see `slmbook.generation.generate` for the options."""
        from slmbook.generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)


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


def from_pretrained(name: str | Path, dtype=None, context_length: int | None = None, attn_impl: str = "sdpa",
                    device=None, revision: str | None = None, cache_dir=None,
                    local_files_only: bool = False) -> QwenModel:
    """Load a Qwen3 checkpoint: a hub repository id ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B-Base") or a
    local Hugging Face folder (config.json + *.safetensors, sharded or not).

    `model = from_pretrained("Qwen/Qwen3-0.6B", dtype="bfloat16", context_length=4096)` downloads once
    into the hub cache; offline it uses the cached copy, or raises slmbook.pretrained.PretrainedNotFound
    saying how to pass a local folder instead. The weights load in `dtype` (default: the checkpoint's)
    on `device` without an intermediate copy. `context_length` shortens the RoPE tables (Qwen3-0.6B
    allows 40,960 positions); the weights do not depend on it. The same `load_hf_state_dict` as the
    equivalence tests checks the mapping; slmbook/pretrained.py does the rest.
    """
    from slmbook.pretrained import load_model

    return load_model(name, dtype=dtype, context_length=context_length, attn_impl=attn_impl, device=device,
                      revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
