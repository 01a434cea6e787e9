from slmbook.exercises import ch12, ch13
from slmbook.qwen import QwenModel


def test_absmax_codes_exercise():
    right = [round(w / (1.27 / 127)) for w in ch12.ROW]  # scale = max|w| / 127
    assert right == [10, -50, 127, 3, -25]
    assert ch12.check_absmax_codes(right).correct
    assert ch12.check_absmax_codes([10, -50, 127, 3, -26]).status == "wrong"
    assert ch12.check_absmax_codes(1.27 / 127).status == "wrong"
    assert ch12.check_absmax_codes(None).status == "not attempted"


def test_group_bits_exercise():
    assert ch12.check_group_bits(4 + (32 + 8) / 32).correct
    assert ch12.check_group_bits(4.0).status == "wrong"
    assert ch12.check_group_bits("5.25").status == "wrong"
    assert ch12.check_group_bits(None).status == "not attempted"


def test_active_parameters_exercise():
    config = ch13.EXERCISE_CONFIG
    model = QwenModel(config)
    one_expert = 3 * config.dim * config.moe_hidden_dim
    right = model.num_parameters() - config.n_layers * (config.n_experts - config.n_experts_per_token) * one_expert
    assert ch13.check_active_parameters(right).correct
    assert ch13.check_active_parameters(model.num_parameters()).status == "wrong"
    assert ch13.check_active_parameters(None).status == "not attempted"


def test_dropped_exercise():
    # first choices: expert 0 is asked by tokens 0, 1, 3, 4 -> token 4 dropped; second choices:
    # token 2's expert 0 is full, token 5's expert 1 is full (tokens 2, 0, 3) -> 3 dropped in all
    assert ch13.check_dropped(3).correct
    assert ch13.check_dropped(2).status == "wrong"
    assert ch13.check_dropped(None).status == "not attempted"
