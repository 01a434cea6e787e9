"""The shape of a Qwen-style model, in one dataclass.

Every chapter that talks about "the model" (memory in chapter 3, the KV cache in chapter 9, Qwen in
chapter 11, training in chapter 14) reads its sizes from a `QwenConfig`. Invalid shapes are refused
here, before any tensor is made, with an error that names the field, the value and what is allowed.
The same kind of check guards what enters a model of that shape: `check_token_ids` (run by
`QwenModel.forward` and `generate`, the entry points, never inside the layers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

DTYPES = ("float32", "float16", "bfloat16")
ROUTER_SCORES = ("softmax", "sigmoid")


def refuse_unknown_fields(cls, names) -> None:
    """A ValueError if `names` holds a field the dataclass `cls` does not have (a typo in a config)."""
    if not isinstance(names, dict):
        raise TypeError(f"{names!r}: expected a dict of {cls.__name__} fields (as to_dict() gives)")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(names) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields are {sorted(fields)}")


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


def positive_int(name: str, value) -> int:
    """`value` if it is an int >= 1 (not a bool); otherwise a ValueError naming the parameter."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return value


def finite_number(name: str, value, minimum: float = 0.0, strict: bool = False, none_means: str | None = None) -> float:
    """`value` if it is a real number (not a bool, not a string), finite and >= `minimum` (> with
    `strict`); otherwise a ValueError naming the parameter. Infinity and NaN are refused because
    they do not fail loudly: norm_eps=inf makes every logit 0, an infinite loss weight every gradient.
    `none_means`: where None is also allowed, what it means (said in the message)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value > minimum if strict else value >= minimum):
        also = f", or None ({none_means})" if none_means else ""
        raise ValueError(f"{name}={value!r}: must be a finite number {'>' if strict else '>='} {minimum:g}{also}")
    return value


def boolean(name: str, value) -> bool:
    """`value` if it is True or False. A switch given as 'no' or 0 would be read by truth value
    ('no' is true), so anything else is refused, naming the parameter."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be True or False")
    return value


@dataclass(frozen=True)
class QwenConfig:
    """Sizes of a Qwen3-style decoder (names follow the book; `transformers` names in comments)."""

    vocab_size: int = 50257  # vocab_size
    context_length: int = 256  # max_position_embeddings
    dim: int = 64  # hidden_size
    n_layers: int = 2  # num_hidden_layers
    n_heads: int = 4  # num_attention_heads
    n_kv_heads: int = 2  # num_key_value_heads (1 = MQA, n_heads = MHA, between = GQA)
    head_dim: int | None = None  # head_dim; None means dim // n_heads
    hidden_dim: int = 192  # intermediate_size of the SwiGLU feed-forward
    rope_theta: float = 1_000_000.0  # rope_theta
    norm_eps: float = 1e-6  # rms_norm_eps
    tie_embeddings: bool = True  # tie_word_embeddings
    qk_norm: bool = True  # Qwen3's per-head RMSNorm on queries and keys
    dtype: str = "float32"  # parameter dtype
    # Mixture of experts (chapter 13; slmbook/moe.py). n_experts=0 keeps the dense SwiGLU everywhere.
    n_experts: int = 0  # num_experts: routed experts per MoE feed-forward (0 = dense model)
    n_experts_per_token: int = 2  # num_experts_per_tok: the router's top-k
    moe_hidden_dim: int | None = None  # moe_intermediate_size of each expert; None = hidden_dim
    n_shared_experts: int = 0  # DeepSeek's always-on experts, added to every token's output
    router_score: str = "softmax"  # "softmax" (Switch, Mixtral, Qwen3-MoE) or "sigmoid" (DeepSeek-V3)
    router_normalize: bool = True  # norm_topk_prob: rescale the k chosen scores to sum to 1
    capacity_factor: float | None = None  # expert capacity = factor * tokens * k / n_experts; None = no drops
    router_aux_loss_coef: float = 0.01  # weight of the Switch load-balancing loss in training
    router_z_loss_coef: float = 0.0  # weight of the ST-MoE router z-loss
    router_bias_update_rate: float = 0.0  # DeepSeek-V3 auxiliary-loss-free balancing step; 0 = off

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"):
            positive_int(f"QwenConfig.{name}", getattr(self, name))
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(
                    f"QwenConfig.dim={self.dim} is not divisible by n_heads={self.n_heads}: "
                    "choose dim = n_heads * head_dim, or set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(
                f"QwenConfig.head_dim={self.head_dim!r}: RoPE rotates pairs of channels, so head_dim "
                "must be an even integer >= 2"
            )
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"QwenConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}: "
                f"n_kv_heads must divide n_heads (allowed: "
                f"{[k for k in range(1, self.n_heads + 1) if self.n_heads % k == 0]})"
            )
        for name in ("rope_theta", "norm_eps"):
            finite_number(f"QwenConfig.{name}", getattr(self, name), strict=True)
        for name in ("tie_embeddings", "qk_norm"):
            boolean(f"QwenConfig.{name}", getattr(self, name))
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ValueError(f"QwenConfig.dtype={self.dtype!r}: unknown dtype, allowed: {DTYPES}")
        self._check_moe()

    def _check_moe(self) -> None:
        for name in ("n_experts", "n_shared_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"QwenConfig.{name}={value!r}: must be an integer >= 0")
        k = positive_int("QwenConfig.n_experts_per_token", self.n_experts_per_token)
        if self.n_experts and k > self.n_experts:
            raise ValueError(f"QwenConfig.n_experts_per_token={k} exceeds n_experts={self.n_experts}: "
                             f"a token can use at most every expert (allowed 1..{self.n_experts})")
        if self.moe_hidden_dim is not None and (not isinstance(self.moe_hidden_dim, int)
                                                or isinstance(self.moe_hidden_dim, bool) or self.moe_hidden_dim < 1):
            raise ValueError(f"QwenConfig.moe_hidden_dim={self.moe_hidden_dim!r}: must be a positive integer or None")
        if not self.n_experts and (self.n_shared_experts or self.moe_hidden_dim is not None):
            raise ValueError(f"QwenConfig.n_shared_experts={self.n_shared_experts}, moe_hidden_dim="
                             f"{self.moe_hidden_dim!r} only apply to a mixture of experts: set n_experts > 0")
        if not isinstance(self.router_score, str) or self.router_score not in ROUTER_SCORES:
            raise ValueError(f"QwenConfig.router_score={self.router_score!r}: allowed {ROUTER_SCORES}")
        boolean("QwenConfig.router_normalize", self.router_normalize)
        if self.capacity_factor is not None:
            finite_number("QwenConfig.capacity_factor", self.capacity_factor, strict=True, none_means="no capacity limit")
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "router_bias_update_rate"):
            finite_number(f"QwenConfig.{name}", getattr(self, name))

    @property
    def is_moe(self) -> bool:
        """True when the feed-forward of every block is a mixture of experts."""
        return self.n_experts > 0

    @property
    def expert_hidden_dim(self) -> int:
        """Hidden size of one expert (moe_hidden_dim, or hidden_dim when that is None)."""
        return self.hidden_dim if self.moe_hidden_dim is None else self.moe_hidden_dim

    @property
    def n_groups(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes) -> "QwenConfig":
        """A copy with some fields changed (validated again)."""
        refuse_unknown_fields(type(self), changes)
        if "dim" in changes or "n_heads" in changes:
            changes.setdefault("head_dim", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "QwenConfig":
        """The config saved by `to_dict` (every value is checked as on creation)."""
        refuse_unknown_fields(cls, values)
        return cls(**values)


# The tiny model: unit tests and every notebook's quick mode on 2 CPU cores.
TINY = QwenConfig()

# The model the book trains in chapter 14 on TinyStories (GPT-2 tokenizer), one GPU, minutes.
BOOK = QwenConfig(
    vocab_size=50257,
    context_length=512,
    dim=512,
    n_layers=8,
    n_heads=8,
    n_kv_heads=4,
    hidden_dim=1536,
)

# The real Qwen3-0.6B shape (no weights): memory and KV-cache formulas at real scale.
QWEN3_0_6B = QwenConfig(
    vocab_size=151936,
    context_length=40960,
    dim=1024,
    n_layers=28,
    n_heads=16,
    n_kv_heads=8,
    head_dim=128,
    hidden_dim=3072,
    rope_theta=1_000_000.0,
    norm_eps=1e-6,
    tie_embeddings=True,
    dtype="bfloat16",
)

# The reader's models, on the book's own TinyStories tokenizer (4,096 ids, slmbook/tinystories_tokenizer.py):
# READER trains on 2 CPU cores in the quick-mode minute; READER_GPU is the pretrained model that ships
# with the package, trained on one GPU (benchmarks/train_reader_model.py), under 10 MB in bfloat16.
READER = QwenConfig(vocab_size=4096, context_length=256, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384)
READER_GPU = QwenConfig(vocab_size=4096, context_length=512, dim=256, n_layers=5, n_heads=4, n_kv_heads=2,
                        hidden_dim=704)

PRESETS = {"tiny": TINY, "book": BOOK, "qwen3-0.6b": QWEN3_0_6B, "reader": READER, "reader-gpu": READER_GPU}


def preset(name: str) -> QwenConfig:
    """A named configuration: 'tiny', 'book' or 'qwen3-0.6b'."""
    if name not in PRESETS:
        raise ValueError(f"preset name={name!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[name]
