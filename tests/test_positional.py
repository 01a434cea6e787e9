"""Position encodings and RoPE, checked against formulas, complex numbers and transformers' Qwen3."""

import cmath
import math

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from slmbook.positional import (
    LearnedPositions,
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    binary_encoding,
    integer_encoding,
    rope_cos_sin,
    rope_frequencies,
    rope_rotation_matrix,
    rope_wavelengths,
    scaled_rope_frequencies,
    sinusoidal_encoding,
    yarn_attention_factor,
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


# --- the RoPE equation, learned positions, ALiBi, context extension --------------------------------

def test_rotation_matrix_is_what_apply_rope_multiplies_by():
    head_dim, theta = 8, 10_000.0
    x = torch.randn(5, head_dim, dtype=torch.float64)
    cos, sin = rope_cos_sin(5, head_dim, theta)
    rotated = apply_rope(x, cos.double(), sin.double())
    for m in range(5):
        assert torch.allclose(rope_rotation_matrix(m, head_dim, theta) @ x[m], rotated[m], atol=1e-6)


def test_rotation_matrices_are_orthogonal_and_compose_by_the_offset():
    for m, n in [(0, 0), (3, 11), (40, 7), (1000, 1003)]:
        r_m, r_n = rope_rotation_matrix(m, 16), rope_rotation_matrix(n, 16)
        assert torch.allclose(r_m.T @ r_m, torch.eye(16, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(r_m.T @ r_n, rope_rotation_matrix(n - m, 16), atol=1e-9)
        q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
        offset_only = torch.dot(q, rope_rotation_matrix(n - m, 16) @ k).item()
        assert torch.dot(r_m @ q, r_n @ k).item() == pytest.approx(offset_only)


def test_learned_positions_add_one_row_per_position_and_stop_at_the_table():
    layer = LearnedPositions(context_length=6, dim=4)
    x = torch.zeros(2, 5, 4)
    assert torch.equal(layer(x)[1], layer.table.weight[:5])
    with pytest.raises(ValueError, match="7 tokens is longer than the 6 learned positions"):
        layer(torch.zeros(7, 4))


@pytest.mark.parametrize("n_heads", [1, 2, 8, 12, 16, 20])
def test_alibi_matches_bloom_in_transformers(n_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    length = 6
    bloom = build_alibi_tensor(torch.ones(1, length), n_heads, torch.float64)[:, 0, :]  # slope * key position
    bias = alibi_bias(n_heads, length)
    assert torch.allclose(alibi_slopes(n_heads), bloom[:, 1], atol=1e-7)
    for m in range(length):  # softmax ignores a constant per row: slope * n and -slope * (m - n) agree
        assert torch.allclose(bias[:, m, : m + 1], bloom[:, : m + 1] - bloom[:, m : m + 1], atol=1e-7)
        assert torch.isinf(bias[:, m, m + 1 :]).all()


def test_alibi_slopes_of_eight_heads_are_the_papers():
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]


def _qwen3_config(head_dim, theta, rope_type, factor, original):
    """YaRN's config names the trained length; linear and dynamic read it as max_position_embeddings."""
    rope = {"rope_type": rope_type, "rope_theta": theta, "factor": factor}
    if rope_type == "yarn":
        rope["original_max_position_embeddings"] = original
    return Qwen3Config(head_dim=head_dim, hidden_size=4 * head_dim, num_attention_heads=4, rope_parameters=rope,
                       max_position_embeddings=int(original * factor) if rope_type == "yarn" else original)


@pytest.mark.parametrize("head_dim, theta, factor, original", [
    (128, 1_000_000.0, 4.0, 32_768), (64, 10_000.0, 8.0, 2048), (16, 10_000.0, 2.0, 64), (128, 500_000.0, 16.0, 8192),
])
def test_context_extension_matches_transformers(head_dim, theta, factor, original):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    yarn, attention = ROPE_INIT_FUNCTIONS["yarn"](_qwen3_config(head_dim, theta, "yarn", factor, original))
    assert torch.allclose(scaled_rope_frequencies(head_dim, theta, factor, "yarn", original), yarn, rtol=1e-6)
    assert yarn_attention_factor(factor) == pytest.approx(attention)
    linear, _ = ROPE_INIT_FUNCTIONS["linear"](_qwen3_config(head_dim, theta, "linear", factor, original))
    assert torch.allclose(scaled_rope_frequencies(head_dim, theta, factor, "pi", original), linear, rtol=1e-6)
    # transformers' dynamic NTK raises theta by (factor * T / original - factor + 1)**(d/(d-2)) at length T:
    # at T = 3 * original that is static NTK-aware scaling with this stretch
    stretch = factor * 3 - (factor - 1)
    dynamic, _ = ROPE_INIT_FUNCTIONS["dynamic"](_qwen3_config(head_dim, theta, "dynamic", factor, original),
                                                seq_len=3 * original)
    assert torch.allclose(scaled_rope_frequencies(head_dim, theta, stretch, "ntk", original), dynamic, rtol=1e-5)


def test_ntk_keeps_the_fastest_pair_and_interpolates_the_slowest():
    base = rope_frequencies(64, 10_000.0)
    ntk = scaled_rope_frequencies(64, 10_000.0, 4.0, "ntk", 2048)
    assert ntk[0] == base[0]
    assert (ntk[-1] * 4).item() == pytest.approx(base[-1].item(), rel=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: scaled_rope_frequencies(16, 1e4, 0.5, "pi", 64), "factor=0.5"),
    (lambda: scaled_rope_frequencies(16, 1e4, 2.0, "rope", 64), "method='rope'"),
    (lambda: scaled_rope_frequencies(16, 1e4, 2.0, "yarn", 0), "original_context=0"),
    (lambda: alibi_slopes(0), "n_heads=0"),
    (lambda: rope_rotation_matrix(1.5, 8), "position=1.5"),
    (lambda: LearnedPositions(0, 4), "context_length=0"),
])
def test_bad_extension_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
