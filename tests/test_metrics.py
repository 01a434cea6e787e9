"""Metrics against torch's built-ins and analytic values."""

import math

import pytest
import torch
import torch.nn.functional as F

from slmbook.metrics import bits_per_byte, bits_per_token, cross_entropy, perplexity, utf8_bytes


def test_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    targets = torch.randint(0, 11, (3, 5), generator=g)
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none").reshape(3, 5)
    torch.testing.assert_close(cross_entropy(logits, targets, reduction="none"), expected)
    torch.testing.assert_close(cross_entropy(logits, targets), expected.mean())
    torch.testing.assert_close(cross_entropy(logits, targets, reduction="sum"), expected.sum())


def test_cross_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0]])
    assert cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(1000.0)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    vocab = 50257
    logits = torch.zeros(4, vocab)
    nll = cross_entropy(logits, torch.tensor([0, 7, 123, 50256]))
    assert nll.item() == pytest.approx(math.log(vocab), rel=1e-6)
    assert perplexity(nll.item()) == pytest.approx(vocab, rel=1e-5)
    assert bits_per_token(nll.item()) == pytest.approx(math.log2(vocab), rel=1e-6)


def test_bits_per_byte_of_a_uniform_byte_model_is_eight():
    text = "Once upon a time, a café served crème brûlée. 🙂"
    n = utf8_bytes(text)
    assert n == len(text.encode("utf-8")) > len(text)
    # a model that gives each of the 256 byte values probability 1/256 needs 8 bits per byte
    assert bits_per_byte(n * math.log(256), n) == pytest.approx(8.0)


def test_bits_per_byte_converts_nats_to_bits_and_divides_by_bytes():
    # 11 bytes predicted with 12.3 nats in total: 12.3 / ln 2 bits spread over 11 bytes
    assert bits_per_byte(12.3, utf8_bytes("hello world")) == pytest.approx(12.3 / math.log(2) / 11)


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="logits"):
        cross_entropy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="total_bytes"):
        bits_per_byte(1.0, 0)
    with pytest.raises(ValueError, match="mean_nll"):
        perplexity(-1.0)
    with pytest.raises(TypeError, match="text"):
        utf8_bytes(b"abc")
