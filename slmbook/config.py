"""The shape of a Qwen-style model, in one dataclass.

Every chapter that talks about "the model" (memory in chapter 3, the KV cache in chapter 9, Qwen in
chapter 11, training in chapter 14) reads its sizes from a `QwenConfig`. Invalid shapes are refused
here, before any tensor is made, with an error that names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16")


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

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"QwenConfig.{name}={value!r}: must be a positive integer")
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
        if not self.rope_theta > 0:
            raise ValueError(f"QwenConfig.rope_theta={self.rope_theta!r}: must be > 0")
        if not self.norm_eps > 0:
            raise ValueError(f"QwenConfig.norm_eps={self.norm_eps!r}: must be > 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"QwenConfig.dtype={self.dtype!r}: unknown dtype, allowed: {DTYPES}")

    @property
    def n_groups(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes) -> "QwenConfig":
        """A copy with some fields changed (validated again)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"QwenConfig has no field(s) {unknown}; fields are {sorted(fields)}")
        if "dim" in changes or "n_heads" in changes:
            changes.setdefault("head_dim", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "QwenConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"QwenConfig has no field(s) {unknown}; fields are {sorted(fields)}")
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

PRESETS = {"tiny": TINY, "book": BOOK, "qwen3-0.6b": QWEN3_0_6B}


def preset(name: str) -> QwenConfig:
    """A named configuration: 'tiny', 'book' or 'qwen3-0.6b'."""
    if name not in PRESETS:
        raise ValueError(f"preset name={name!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[name]
