"""Position encodings and RoPE, checked against formulas, complex numbers and transformers' Qwen3."""

import cmath
import math

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from slmbook.positional import (
    RotaryEmbedding, apply_rope, binary_encoding, integer_encoding, rope_cos_sin, rope_frequencies,
    rope_wavelengths, sinusoidal_encoding,
)


def test_integer_encoding_is_the_position():
    enc = integer_encoding(7)
    assert enc.shape == (7, 1)
    assert enc[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_binary_encoding_matches_python_binary_digits():
    enc = binary_encoding(13, 4)
    for p in range(13):
        digits = format(p, "04b")[::-1]  # least significant first
        assert enc[p].tolist() == [float(d) for d in digits]


def test_binary_encoding_refuses_positions_that_do_not_fit():
    with pytest.raises(ValueError, match="n_bits=3"):
        binary_encoding(9, 3)


def test_sinusoidal_encoding_matches_the_paper_formula():
    n, dim, base = 11, 8, 10_000.0
    enc = sinusoidal_encoding(n, dim, base)
    for p in range(n):
        for i in range(dim // 2):
            angle = p / base ** (2 * i / dim)
            assert enc[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert enc[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: sinusoidal_encoding(4, 7), "dim=7"),
    (lambda: sinusoidal_encoding(0, 8), "n_positions=0"),
    (lambda: sinusoidal_encoding(4, 8, base=0), "base=0"),
    (lambda: rope_frequencies(5), "head_dim=5"),
    (lambda: rope_frequencies(8, theta=-1.0), "theta=-1.0"),
    (lambda: RotaryEmbedding(6, 0), "context_length=0"),
    (lambda: integer_encoding(2.5), "n_positions=2.5"),
])
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("head_dim, theta", [(2, 10_000.0), (8, 10_000.0), (64, 1_000_000.0), (128, 500_000.0)])
def test_rope_tables_match_transformers_qwen3(head_dim, theta):
    context = 37
    hf_config = Qwen3Config(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                            rope_theta=theta, max_position_embeddings=context)
    hf_rope = Qwen3RotaryEmbedding(hf_config)
    x = torch.zeros(1, context, head_dim)
    hf_cos, hf_sin = hf_rope(x, torch.arange(context)[None, :])
    cos, sin = rope_cos_sin(context, head_dim, theta)
    torch.testing.assert_close(rope_frequencies(head_dim, theta), hf_rope.inv_freq, rtol=0, atol=0)
    torch.testing.assert_close(cos, hf_cos[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, hf_sin[0], rtol=0, atol=1e-6)

    q, k = torch.randn(2, 3, context, head_dim), torch.randn(2, 3, context, head_dim)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hf_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos, sin), hf_k, rtol=0, atol=1e-6)


def test_rope_is_complex_multiplication_of_half_split_pairs():
    """Pair i = (x[i], x[i + d/2]) read as a complex number is multiplied by exp(i * p * w_i)."""
    head_dim, theta, position = 6, 100.0, 5
    rope = RotaryEmbedding(head_dim, context_length=8, theta=theta)
    x = torch.randn(head_dim, dtype=torch.float32)
    rotated = rope(x.view(1, 1, 1, head_dim).expand(1, 1, position + 1, head_dim).contiguous())[0, 0, position]
    half = head_dim // 2
    for i in range(half):
        w = theta ** (-2 * i / head_dim)
        z = complex(x[i].item(), x[i + half].item()) * cmath.exp(1j * position * w)
        assert rotated[i].item() == pytest.approx(z.real, abs=1e-5)
        assert rotated[i + half].item() == pytest.approx(z.imag, abs=1e-5)


def test_rope_keeps_vector_length():
    rope = RotaryEmbedding(16, 50)
    x = torch.randn(2, 4, 50, 16, dtype=torch.float64)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))


def test_rope_dot_product_depends_only_on_the_offset():
    head_dim, context = 32, 64
    rope = RotaryEmbedding(head_dim, context, theta=10_000.0)
    torch.manual_seed(0)
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
    rot_q = rope(q.expand(context, head_dim).contiguous())  # q placed at every position
    rot_k = rope(k.expand(context, head_dim).contiguous())
    scores = rot_q @ rot_k.T  # scores[m, n] = q at m . k at n
    for offset in (0, 1, 5, 17):
        diagonal = torch.diagonal(scores, offset=-offset)  # all pairs with m - n = offset
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5, rtol=0)
    # ... and it does change with the offset (otherwise RoPE would carry no position at all)
    assert abs(scores[5, 0] - scores[5, 4]) > 1e-3


def test_rope_start_shifts_positions():
    rope = RotaryEmbedding(8, 20)
    x = torch.randn(1, 1, 20, 8)
    torch.testing.assert_close(rope(x[:, :, 7:12], start=7), rope(x)[:, :, 7:12])


def test_rope_refuses_positions_outside_the_table():
    rope = RotaryEmbedding(8, 10)
    with pytest.raises(ValueError, match="context_length=10"):
        rope(torch.randn(1, 1, 4, 8), start=8)
    with pytest.raises(ValueError, match="head_dim=8"):
        rope(torch.randn(1, 1, 4, 6))


def test_rope_tables_are_not_saved_in_the_state_dict():
    rope = RotaryEmbedding(8, 10)
    assert dict(rope.state_dict()) == {}
    assert {name for name, _ in rope.named_buffers()} == {"cos", "sin"}


def test_rope_wavelengths_are_full_turns():
    head_dim, theta = 8, 10_000.0
    wavelengths = rope_wavelengths(head_dim, theta)
    assert wavelengths[0].item() == pytest.approx(2 * math.pi)
    assert wavelengths[-1].item() == pytest.approx(2 * math.pi * theta ** (6 / 8), rel=1e-6)
