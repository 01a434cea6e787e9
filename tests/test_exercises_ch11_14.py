"""Chapter 11 and 14 checkers accept the right answers (computed independently here) and refuse wrong ones."""

import math

from slmbook.config import BOOK
from slmbook.exercises import ch11, ch14


def count_by_hand(c):
    """The parameter formula, written from the architecture (not from slmbook's model)."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    per_layer = c.dim * q + 2 * c.dim * kv + q * c.dim + 2 * c.head_dim + 3 * c.dim * c.hidden_dim + 2 * c.dim
    head = 0 if c.tie_embeddings else c.vocab_size * c.dim
    return c.vocab_size * c.dim + c.n_layers * per_layer + c.dim + head


def test_parameter_count():
    right = count_by_hand(ch11.EXERCISE_CONFIG)
    assert ch11.check_parameter_count(right).correct
    assert ch11.check_parameter_count(right + 1000 * 64).status == "wrong"  # the tied head counted twice
    assert ch11.check_parameter_count(float(right)).status == "wrong"
    assert ch11.check_parameter_count(None).status == "not attempted"
    untied = ch11.EXERCISE_CONFIG.replace(tie_embeddings=False)
    assert ch11.check_parameter_count(count_by_hand(untied), untied).correct


def test_initial_loss():
    assert ch11.check_initial_loss(math.log(50257)).correct
    assert ch11.check_initial_loss(10.82).correct
    assert ch11.check_initial_loss(math.log2(50257)).status == "wrong"  # bits, not nats
    assert ch11.check_initial_loss(None).status == "not attempted"


def test_micro_batch():
    assert ch14.check_micro_batch(8).correct
    assert ch14.check_micro_batch(16).status == "wrong"
    assert ch14.check_micro_batch(64).status == "wrong"


def test_mfu():
    c, T = BOOK, 512
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    forward = 2 * c.n_layers * (c.dim * q + 2 * c.dim * kv + q * c.dim + 3 * c.dim * c.hidden_dim) \
        + 4 * c.n_layers * q * T + 2 * c.dim * c.vocab_size
    right = 1.0e6 * 3 * forward / 989e12
    assert ch14.check_mfu(right).correct
    assert ch14.check_mfu(1.0e6 * 6 * 51e6 / 989e12 * 0.8).status == "wrong"  # a rough 6N guess is not enough
    assert ch14.check_mfu(right * 100).status == "wrong"  # a percentage, not a fraction


def test_learning_rate():
    progress = (500 - 50) / (1000 - 1 - 50)
    right = 1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress)) / 2
    assert ch14.check_learning_rate(right).correct
    assert ch14.check_learning_rate(1e-3).status == "wrong"
    assert ch14.check_learning_rate(None).status == "not attempted"
