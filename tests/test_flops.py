"""FLOPs per token against a direct count: torch.utils.flop_counter on real Qwen3 models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from slmbook import flops
from slmbook.config import BOOK, QWEN3_0_6B, TINY

transformers = pytest.importorskip("transformers")


def hf_qwen3(config, attention="eager"):
    """A randomly initialised transformers Qwen3 with this config's shape."""
    hf_config = transformers.Qwen3Config(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim,
        max_position_embeddings=config.context_length, tie_word_embeddings=config.tie_embeddings,
        rope_theta=config.rope_theta, rms_norm_eps=config.norm_eps,
    )
    hf_config._attn_implementation = attention
    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(hf_config)


def counted_flops(model, batch, seq_len, vocab_size):
    """(forward, forward + backward) FLOPs counted op by op while a training step runs.

    RoPE's angle table is left out, as the book's count leaves it out: some transformers releases
    (5.17, seen on a GPU machine) build it with a matmul of positions by frequencies (head_dim x
    seq_len FLOPs, once per forward, no weights), others with a broadcast product that counts zero.
    """
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        loss = model(ids, labels=ids).loss
        forward = counter.get_total_flops() - rotary_table_flops(counter)
        loss.backward()
    return forward, counter.get_total_flops() - rotary_table_flops(counter)


def rotary_table_flops(counter: FlopCounterMode) -> int:
    """FLOPs counted inside the model's rotary-embedding module (the angle table, not the rotation)."""
    return sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith(".rotary_emb"))


@pytest.mark.parametrize("config,seq_len", [
    (TINY.replace(vocab_size=1000), 32),
    (TINY.replace(vocab_size=777, n_heads=4, n_kv_heads=1, head_dim=24, tie_embeddings=False), 48),
    (TINY.replace(vocab_size=500, dim=48, n_heads=6, n_kv_heads=6, hidden_dim=80, n_layers=3), 17),
])
def test_training_flops_equal_a_direct_count_on_transformers_qwen3(config, seq_len):
    batch = 2
    forward, total = counted_flops(hf_qwen3(config), batch, seq_len, config.vocab_size)
    assert flops.forward_flops_per_token(config, seq_len) * batch * seq_len == forward
    assert flops.training_flops_per_token(config, seq_len) * batch * seq_len == total


def test_direct_count_notices_a_different_model():
    """The comparison can fail: one more layer in the model is one layer's FLOPs more."""
    config = TINY.replace(vocab_size=1000)
    forward, _ = counted_flops(hf_qwen3(config.replace(n_layers=3)), 1, 16, 1000)
    assert flops.forward_flops_per_token(config, 16) * 16 < forward


def test_qwen3_0_6b_counts_against_the_published_shape():
    # Qwen3-0.6B: 0.44B non-embedding parameters in products + the 151936 x 1024 head
    parts = flops.forward_flops_breakdown(QWEN3_0_6B, 1)
    non_embedding = (parts["attention projections"] + parts["feed-forward"]) // 2
    assert non_embedding == 28 * (1024 * 2048 * 2 + 1024 * 1024 * 2 + 3 * 1024 * 3072)
    assert parts["output head"] == 2 * 1024 * 151936


def test_six_n_and_the_attention_term():
    assert flops.six_n_approximation(BOOK) == 6 * (flops.forward_flops_per_token(BOOK, 1)
                                                   - flops.forward_flops_breakdown(BOOK, 1)["attention scores"]) // 2
    t = 512
    attention = flops.training_flops_per_token(BOOK, t) - flops.six_n_approximation(BOOK)
    assert attention == 12 * BOOK.n_layers * BOOK.n_heads * BOOK.head_dim * t  # PaLM's 12 L H Q T


def test_causal_counts_the_lower_triangle():
    full = flops.forward_flops_breakdown(BOOK, 512)["attention scores"]
    causal = flops.forward_flops_breakdown(BOOK, 512, causal=True)["attention scores"]
    assert causal == round(full * (512 + 1) / 2 / 512)


def test_mfu():
    per_token = flops.training_flops_per_token(BOOK, 512)
    assert flops.mfu(1e5, BOOK, 512, 989e12) == pytest.approx(1e5 * per_token / 989e12)
    with pytest.raises(ValueError, match="peak_flops=0"):
        flops.mfu(1e5, BOOK, 512, 0)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(config=BOOK, seq_len=0), ValueError, "seq_len=0"),
    (dict(config=BOOK, seq_len=513), ValueError, "context_length=512"),
    (dict(config=BOOK, seq_len=2.5), ValueError, "seq_len=2.5"),
    (dict(config={"dim": 4}, seq_len=8), TypeError, "QwenConfig"),
])
def test_bad_input_is_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        flops.training_flops_per_token(**kwargs)


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_training_flops_equal_a_direct_count_on_our_qwen_model(attn_impl):
    """The model chapter 14 trains (slmbook.qwen): the fused attention kernel is counted through
    PyTorch's math backend, which computes the same products one by one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from slmbook.qwen import QwenModel

    config = TINY.replace(vocab_size=800, n_layers=3)
    torch.manual_seed(0)
    model = QwenModel(config, attn_impl=attn_impl)
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(ids, ids)
        forward = counter.get_total_flops()
        loss.backward()
    assert flops.forward_flops_per_token(config, 24) * ids.numel() == forward
    assert flops.training_flops_per_token(config, 24) * ids.numel() == counter.get_total_flops()


def test_training_seconds_is_the_inverse_of_mfu():
    seconds = flops.training_seconds(1e9, BOOK, 512, 989e12, mfu=0.4)
    assert flops.mfu(1e9 / seconds, BOOK, 512, 989e12) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="mfu=0"):
        flops.training_seconds(1e9, BOOK, 512, 989e12, mfu=0)


def test_the_rotary_table_is_what_is_left_out():
    """A matmul inside a module named rotary_emb (as older transformers build RoPE's angles) is not counted."""
    class Rotary(torch.nn.Module):
        def forward(self, positions, frequencies):
            return positions @ frequencies  # (T, 1) @ (1, head_dim / 2): head_dim x T FLOPs

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rotary_emb = Rotary()
            self.proj = torch.nn.Linear(8, 8, bias=False)

        def forward(self, x):
            self.rotary_emb(torch.ones(32, 1), torch.ones(1, 8))
            return self.proj(x)

    with FlopCounterMode(display=False) as counter:
        Model()(torch.ones(4, 8))
    assert counter.get_total_flops() == 2 * 32 * 8 + 2 * 4 * 8 * 8
    assert rotary_table_flops(counter) == 2 * 32 * 8
