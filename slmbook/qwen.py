"""The Qwen3-style decoder, assembled from the book's parts (chapters 7-11).

    token ids -> embed_tokens -> n_layers x TransformerBlock -> norm (RMSNorm) -> lm_head -> logits

    TransformerBlock (pre-norm):  x = x + self_attn(input_layernorm(x))            # chapter 8, 9
                                  x = x + mlp(post_attention_layernorm(x))          # chapter 10

with RoPE (chapter 7) inside attention, grouped-query attention with per-head QK-RMSNorm, SwiGLU, and
the output head tied to the embedding table (one matrix for reading and writing tokens).

Parameter names are those of `transformers`' Qwen3ForCausalLM minus its "model." prefix, so the
conversion both ways is a renaming (slmbook/hf_interop.py); a real Qwen3 checkpoint (a hub repository, or
a local folder with config.json and *.safetensors) loads with `slmbook.pretrained.from_pretrained`, and
the tests prove the logits equal to `transformers`' to 1e-5 in float32.

Built for training too: the layers have no data-dependent Python branches and no `.item()` (the one
read of the device is the entry check of the token ids, left out under torch.compile), the RoPE
tables are non-persistent buffers sized to the context, attention runs through
`F.scaled_dot_product_attention(is_causal=True)` unless `attn_impl="manual"`, and
`model(input_ids, targets)` returns (logits, loss) with the loss from `F.cross_entropy`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slmbook.attention import GroupedQueryAttention, check_attn_impl
from slmbook.config import QwenConfig, check_token_ids
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
        # The model's entry checks (shapes and dtypes: metadata, no device read); the layers below trust them.
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
        # The id range is the one check that reads the device; a traced or captured step cannot read it.
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


# Where the names that used to live here went (this module no longer converts to and from transformers):
# an old `slmbook.qwen.from_pretrained` gets an error that says where to look, not a bare AttributeError.
MOVED = {"from_pretrained": "slmbook.pretrained", **{name: "slmbook.hf_interop" for name in (
    "hf_name", "our_name", "to_hf_state_dict", "load_hf_state_dict", "hf_config_dict", "require_hf_keys",
    "config_from_hf", "hf_config_kwargs", "from_transformers", "to_transformers", "build_transformers_model")}}


def __getattr__(name: str):
    if name in MOVED:
        raise AttributeError(f"slmbook.qwen.{name} has moved: use {MOVED[name]}.{name}")
    raise AttributeError(f"module 'slmbook.qwen' has no attribute {name!r}")
