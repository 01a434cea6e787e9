"""Chapters 12 and 13 exercise checkers: right answers (computed independently here) pass, wrong
ones fail, a hint comes only after a wrong try, and no checker accepts a number the notebooks print."""

import pytest
from test_exercises_ch04_06 import assert_no_printed_answer, printed_numbers

from slmbook import moe
from slmbook.exercises import ch12, ch13


def test_absmax_codes_exercise():
    right = [round(w / (1.27 / 127)) for w in ch12.ROW]  # scale = max|w| / 127
    assert right == [10, -50, 127, 3, -25]
    assert ch12.check_absmax_codes(right).correct
    assert ch12.check_absmax_codes([10, -50, 127, 3, -26]).status == "wrong"
    assert ch12.check_absmax_codes(1.27 / 127).status == "wrong"
    assert ch12.check_absmax_codes(None).status == "not attempted"


def test_gptq_bytes_exercise():
    rows, cols = 3072, 1024
    groups = rows * cols // 128
    right = rows * cols * 4 // 8 + groups * (16 + 4) // 8  # codes, then a float16 scale + 4-bit zero per group
    assert right == 1_634_304
    assert ch12.check_gptq_bytes(right).correct
    assert "codes alone" in ch12.check_gptq_bytes(rows * cols // 2).message
    assert ch12.check_gptq_bytes(rows * cols // 2 + groups * 6).status == "wrong"  # fp32 scale + 8-bit zero: not it
    assert ch12.check_gptq_bytes(float(right)).status == "wrong"  # a count of bytes is an integer
    assert ch12.check_gptq_bytes("1634304").status == "wrong"


def test_mixed_model_exercise():
    dense, sparse = moe.parameter_counts(ch13.DENSE_CONFIG), moe.parameter_counts(ch13.MOE_CONFIG)
    c = ch13.MOE_CONFIG
    # the same model with all 6 layers dense or all 6 MoE: the blocks differ only in the feed-forward
    per_layer_dense = (dense["total"] - c.vocab_size * c.dim - c.dim) // c.n_layers
    per_layer_moe = (sparse["total"] - c.vocab_size * c.dim - c.dim) // c.n_layers
    total = c.vocab_size * c.dim + c.dim + 2 * per_layer_dense + 4 * per_layer_moe
    unused = 4 * (c.n_experts - c.n_experts_per_token) * 3 * c.dim * c.moe_hidden_dim
    assert ch13.check_mixed_model([total, total - unused]).correct
    assert ch13.check_mixed_model((total, total - unused)).correct
    assert "total is right" in ch13.check_mixed_model([total, total]).message
    assert ch13.check_mixed_model([sparse["total"], sparse["active"]]).status == "wrong"  # all six layers MoE
    assert ch13.check_mixed_model(total).status == "wrong"


def test_dropped_exercise():
    # first choices: expert 0 is asked by tokens 0, 1, 3, 4 -> token 4 dropped; second choices:
    # token 2's expert 0 is full, token 5's expert 1 is full (tokens 2, 0, 3) -> 3 dropped in all
    assert ch13.check_dropped(3).correct
    assert ch13.check_dropped(2).status == "wrong"
    assert ch13.check_dropped(3.0).status == "wrong"


@pytest.mark.parametrize("check", [ch12.check_absmax_codes, ch12.check_gptq_bytes, ch13.check_mixed_model,
                                   ch13.check_dropped])
def test_hint_only_after_a_wrong_try(check):
    first = check(None)
    assert first.status == "not attempted" and "Hint" not in first.message
    assert "Hint" in check(12345).message


def test_answers_are_not_printed_in_the_chapters():
    assert_no_printed_answer("12_quantization.ipynb", [ch12.check_gptq_bytes])
    printed = printed_numbers("13_mixture_of_experts.ipynb")
    assert len(printed) > 20 and not set(ch13.mixed_model_counts()) & printed
