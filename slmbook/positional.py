"""Where is a token? Position encodings, from the naive ones to RoPE (chapter 7).

Attention by itself sees a *set* of tokens: shuffle the inputs and every output is shuffled the same
way. Order has to be written into the vectors. This module holds the three classic answers (an
integer, its binary digits, a bank of sinusoids: each one added to the token embedding) and the one
Qwen uses, rotary position embedding (RoPE), which rotates queries and keys instead of adding to them.

RoPE layout. A head vector of `head_dim` channels is read as `head_dim / 2` two-dimensional pairs.
As in Qwen, Llama and `transformers`, pair i is channels (i, i + head_dim/2) ("half split") and it
turns by the angle `position * theta ** (-2i / head_dim)`: pair 0 spins fastest, the last pair
slowest. Because a rotation by a then by -b is a rotation by a - b, the dot product of a query at
position m with a key at position n depends on the positions only through m - n.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmbook.config import positive_int


def integer_encoding(n_positions: int) -> torch.Tensor:
    """Position p as the number p, shape (n_positions, 1).

    The simplest idea, and its limit: the value grows without bound, so long sequences push it far
    outside the scale of the embeddings it is added to, and positions never seen in training give
    values the model has never seen either.
    """
    positive_int("n_positions", n_positions)
    return torch.arange(n_positions, dtype=torch.float32)[:, None]


def binary_encoding(n_positions: int, n_bits: int) -> torch.Tensor:
    """Position p as its `n_bits` binary digits (least significant first), shape (n_positions, n_bits).

    Bounded (every value is 0 or 1), but neighbours can differ in many bits at once (7 = 0111,
    8 = 1000): distance in position is not distance in the encoding, and the digits jump instead of
    varying smoothly. It also runs out: only 2**n_bits positions exist.
    """
    positive_int("n_positions", n_positions)
    positive_int("n_bits", n_bits)
    if n_positions > 2**n_bits:
        raise ValueError(
            f"n_positions={n_positions} does not fit in n_bits={n_bits}: at most 2**{n_bits}={2**n_bits} positions"
        )
    positions = torch.arange(n_positions)[:, None]
    bits = torch.arange(n_bits)[None, :]
    return ((positions >> bits) & 1).to(torch.float32)


def sinusoidal_encoding(n_positions: int, dim: int, base: float = 10_000.0) -> torch.Tensor:
    """The Transformer's sinusoids (Vaswani et al. 2017), shape (n_positions, dim).

    Channel 2i holds sin(p * w_i) and channel 2i + 1 holds cos(p * w_i), with w_i = base**(-2i/dim):
    a smooth, bounded 'binary counter' whose digits are waves of geometrically growing wavelength.
    Still added to the embedding, so position and content share the same channels.
    """
    positive_int("n_positions", n_positions)
    positive_int("dim", dim)
    if dim % 2:
        raise ValueError(f"dim={dim}: sinusoidal encoding pairs sin and cos channels, so dim must be even")
    if not base > 0:
        raise ValueError(f"base={base!r}: must be > 0")
    positions = torch.arange(n_positions, dtype=torch.float32)[:, None]
    frequencies = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions * frequencies
    encoding = torch.empty(n_positions, dim)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles)
    return encoding


def rope_frequencies(head_dim: int, theta: float = 10_000.0) -> torch.Tensor:
    """Angular speed of each of the head_dim/2 pairs, in radians per position: theta**(-2i/head_dim)."""
    positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim}: RoPE rotates pairs of channels, so head_dim must be even")
    if not theta > 0:
        raise ValueError(f"theta={theta!r}: must be > 0")
    # Same expression as transformers' Qwen3RotaryEmbedding, so the float32 values agree bit for bit.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_cos_sin(context_length: int, head_dim: int, theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every angle for positions 0..context_length-1, each (context_length, head_dim).

    The half-split layout repeats the head_dim/2 angles twice, so that `apply_rope` is two
    element-wise products and no gather.
    """
    positive_int("context_length", context_length)
    inv_freq = rope_frequencies(head_dim, theta)
    angles = torch.arange(context_length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90-degree turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair of x (..., T, head_dim) by its angle: x*cos + rotate_half(x)*sin.

    cos and sin are (T, head_dim) for the T positions of x; they are cast to x's dtype, as in
    `transformers`, so a bfloat16 model rotates in bfloat16.
    """
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """RoPE with cos/sin precomputed once for every position up to `context_length`.

    The tables are non-persistent buffers: they move with `.to(device)` but are not saved in the
    state dict (they are a function of the config, not learned), and slicing them is cheap and
    `torch.compile`-friendly (no Python work per position).
    """

    def __init__(self, head_dim: int, context_length: int, theta: float = 10_000.0):
        super().__init__()
        cos, sin = rope_cos_sin(context_length, head_dim, theta)
        self.head_dim = head_dim
        self.context_length = context_length
        self.theta = theta
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def cos_sin(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (length, head_dim) tables for positions start .. start+length-1."""
        if start < 0 or start + length > self.context_length:
            raise ValueError(
                f"positions {start}..{start + length - 1} are outside the RoPE table: "
                f"context_length={self.context_length} allows positions 0..{self.context_length - 1}"
            )
        return self.cos[start : start + length], self.sin[start : start + length]

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x (..., T, head_dim) as if its tokens sat at positions start .. start+T-1."""
        if x.shape[-1] != self.head_dim:  # a shape check, free; chapter 7 calls this module directly
            raise ValueError(f"x.shape[-1]={x.shape[-1]} but this RotaryEmbedding has head_dim={self.head_dim}")
        cos, sin = self.cos_sin(start, x.shape[-2])
        return apply_rope(x, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, context_length={self.context_length}, theta={self.theta}"


def rope_wavelengths(head_dim: int, theta: float = 10_000.0) -> torch.Tensor:
    """Positions needed for each pair to turn a full circle: 2*pi / frequency."""
    return 2 * math.pi / rope_frequencies(head_dim, theta)


def rope_rotation_matrix(position: int, head_dim: int, theta: float = 10_000.0) -> torch.Tensor:
    """R_m, the (head_dim, head_dim) matrix with which RoPE multiplies a vector at position m.

    It is block-diagonal in the half-split pairs: for pair i (channels i and i + head_dim/2) the
    2x2 rotation [[cos a, -sin a], [sin a, cos a]] with a = m * theta**(-2i/head_dim). `apply_rope`
    does the same product without building the matrix; this one is for reading the equation:
    R_m is orthogonal and R_m^T R_n = R_(n-m), so <R_m q, R_n k> = <q, R_(n-m) k>. float64.
    """
    if not isinstance(position, int) or isinstance(position, bool):
        raise ValueError(f"position={position!r}: must be an integer")
    half = head_dim // 2
    angles = position * rope_frequencies(head_dim, theta).double()
    cos, sin = angles.cos(), angles.sin()
    matrix = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    i = torch.arange(half)
    matrix[i, i], matrix[i, i + half] = cos, -sin
    matrix[i + half, i], matrix[i + half, i + half] = sin, cos
    return matrix


class LearnedPositions(nn.Module):
    """GPT-2's absolute positions: a trained table of one vector per position, added to the tokens.

    Nothing ties position 7 to position 8: each row is learned on its own, so the model knows only the
    positions it was trained on, and a sequence longer than `context_length` has no row at all
    (GPT-2: 1,024 positions, one 768-wide row each in its smallest model).
    """

    def __init__(self, context_length: int, dim: int):
        super().__init__()
        self.context_length = positive_int("context_length", context_length)
        self.table = nn.Embedding(context_length, positive_int("dim", dim))
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., T, dim) plus the rows of positions 0..T-1."""
        length = x.shape[-2]
        if length > self.context_length:
            raise ValueError(f"a sequence of {length} tokens is longer than the {self.context_length} learned "
                             f"positions: positions {self.context_length}..{length - 1} have no vector")
        return x + self.table(torch.arange(length, device=x.device))


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): a geometric sequence starting at 2**(-8/n) with
    ratio 2**(-8/n) for n heads a power of two (8 heads: 1/2, 1/4, ..., 1/256). Otherwise the slopes
    of the nearest smaller power of two, then every other slope of the next power of two, as in the
    paper's code."""
    positive_int("n_heads", n_heads)

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if n_heads & (n_heads - 1) == 0:
        return torch.tensor(power_of_two(n_heads), dtype=torch.float64)
    below = 1 << (n_heads.bit_length() - 1)
    return torch.tensor(power_of_two(below) + power_of_two(2 * below)[0::2][: n_heads - below], dtype=torch.float64)


def alibi_bias(n_heads: int, length: int) -> torch.Tensor:
    """The (n_heads, length, length) bias ALiBi adds to the attention scores instead of encoding
    positions: -slope_h * (m - n) for a query at m and a key at n <= m, -inf above the diagonal
    (future keys, as a causal mask). No rotation, no table: far keys are simply penalized, linearly."""
    positive_int("length", length)
    slopes = alibi_slopes(n_heads)
    positions = torch.arange(length, dtype=torch.float64)
    distance = positions[:, None] - positions[None, :]  # m - n
    bias = -slopes[:, None, None] * distance + 0.0  # + 0.0: no "-0.0" on the diagonal
    return bias.masked_fill(distance < 0, float("-inf"))


ROPE_SCALINGS = ("pi", "ntk", "yarn")


def scaled_rope_frequencies(head_dim: int, theta: float, factor: float, method: str, original_context: int,
                            beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """RoPE frequencies stretched to run a model `factor` times past the `original_context` it was
    trained on:

    - 'pi', position interpolation (Chen et al. 2023): every frequency divided by `factor`, so the
      longest new position turns each pair exactly as far as the longest trained one did; the price
      is that neighbouring positions are `factor` times closer in angle.
    - 'ntk', "NTK-aware" scaling (bloc97, 2023): theta raised to theta * factor**(d/(d-2)); the
      fastest pair keeps its speed, the slowest is divided by `factor`, the others in between.
    - 'yarn', YaRN (Peng et al. 2023): pairs that turn more than `beta_fast` times within the
      original context keep their frequency, pairs that turn less than `beta_slow` times are
      interpolated like 'pi', with a linear ramp between (transformers' `_compute_yarn_parameters`).
      YaRN also scales the attention logits, see `yarn_attention_factor`.
    """
    base = rope_frequencies(head_dim, theta)
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1:
        raise ValueError(f"factor={factor!r}: the context is stretched by a number >= 1")
    positive_int("original_context", original_context)
    if method == "pi":
        return base / factor
    if method == "ntk":
        if head_dim == 2:  # a single pair is both the fastest and the slowest: nothing to spread
            return base / factor
        return rope_frequencies(head_dim, theta * factor ** (head_dim / (head_dim - 2)))
    if method == "yarn":
        if not beta_fast > beta_slow > 0:
            raise ValueError(f"beta_fast={beta_fast!r}, beta_slow={beta_slow!r}: need beta_fast > beta_slow > 0")

        def pair_turning(turns: float) -> float:  # the (fractional) pair index that turns `turns` times
            return head_dim * math.log(original_context / (turns * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(pair_turning(beta_fast)), 0)
        high = min(math.ceil(pair_turning(beta_slow)), head_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        return base / factor * ramp + base * (1 - ramp)  # ramp 0: keep (fast pairs), 1: interpolate (slow)
    raise ValueError(f"method={method!r}: allowed {ROPE_SCALINGS}")


def yarn_attention_factor(factor: float) -> float:
    """YaRN's scale of cos and sin (so of the logits, squared): 0.1 ln(factor) + 1, keeping attention
    as sharp at the stretched length as it was (1 for factor <= 1)."""
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 0:
        raise ValueError(f"factor={factor!r}: must be a positive number")
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
