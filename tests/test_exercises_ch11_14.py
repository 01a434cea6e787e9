"""Chapter 11 and 14 checkers accept the right answers (computed independently here) and refuse wrong ones."""

import json
import math
import re
from pathlib import Path

import torch

from slmbook.exercises import ch11, ch14
from slmbook.qwen import QwenModel


def count_by_hand(c):
    """The parameter formula, written from the architecture (not from slmbook's model)."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    per_layer = c.dim * q + 2 * c.dim * kv + q * c.dim + 2 * c.head_dim + 3 * c.dim * c.hidden_dim + 2 * c.dim
    head = 0 if c.tie_embeddings else c.vocab_size * c.dim
    return c.vocab_size * c.dim + c.n_layers * per_layer + c.dim + head


def test_ch11_parameter_count():
    configs = ch11.EXERCISE_CONFIGS
    assert {c.tie_embeddings for c in configs} == {True, False}  # both kinds of head are tried
    assert {c.n_kv_heads == c.n_heads for c in configs} == {True, False} and any(c.n_kv_heads == 1 for c in configs)
    assert any(c.head_dim != c.dim // c.n_heads for c in configs)
    assert ch11.check_parameter_count(count_by_hand).correct
    twice = ch11.check_parameter_count(lambda c: count_by_hand(c.replace(tie_embeddings=False)))  # tied head twice
    assert twice.status == "wrong" and "the built model has" in twice.message
    assert ch11.check_parameter_count(lambda c: count_by_hand(c.replace(head_dim=None))).status == "wrong"
    assert ch11.check_parameter_count(lambda c: count_by_hand(c) - c.n_layers * 2 * c.head_dim).status == "wrong"
    assert ch11.check_parameter_count(lambda c: float(count_by_hand(c))).status == "wrong"
    assert ch11.check_parameter_count(lambda c: 1 / 0).status == "wrong"
    assert ch11.check_parameter_count(count_by_hand(configs[0])).status == "wrong"  # a number, not a function
    for untried in (ch11.check_parameter_count(None), ch11.check_parameter_count(lambda c: None)):
        assert untried.status == "not attempted" and "Hint" not in untried.message  # no hint before a try


def loss_by_hand(logits, ids):
    """Mean of -log softmax(logits[t])[ids[t + 1]], written out with logsumexp."""
    picked = logits[:-1].gather(1, ids[1:, None])[:, 0]
    return (torch.logsumexp(logits[:-1], dim=1) - picked).mean()


def test_ch11_next_token_loss():
    assert ch11.check_next_token_loss(loss_by_hand).correct
    assert ch11.check_next_token_loss(lambda lg, ids: float(loss_by_hand(lg, ids))).correct  # a float is fine
    unshifted = ch11.check_next_token_loss(lambda lg, ids: torch.nn.functional.cross_entropy(lg, ids))
    assert unshifted.status == "wrong" and "logits[:-1]" in unshifted.message
    assert ch11.check_next_token_loss(lambda lg, ids: loss_by_hand(lg, ids) / math.log(2)).status == "wrong"  # bits
    assert ch11.check_next_token_loss(lambda lg, ids: loss_by_hand(lg, ids) * (len(ids) - 1)).status == "wrong"  # sum
    assert ch11.check_next_token_loss(lambda lg, ids: lg[:-1].sum(1)).status == "wrong"  # not one number
    assert ch11.check_next_token_loss(lambda lg, ids: 1 / 0).status == "wrong"
    assert ch11.check_next_token_loss(2.5).status == "wrong"
    for untried in (ch11.check_next_token_loss(None), ch11.check_next_token_loss(lambda lg, ids: None)):
        assert untried.status == "not attempted" and "Hint" not in untried.message


def test_ch11_no_checker_passes_on_a_number_printed_in_the_chapter():
    from test_exercises_ch04_06 import printed_numbers

    numbers = printed_numbers("11_qwen.ipynb")
    assert len(numbers) > 20  # the notebook has stored outputs to search
    for check in (ch11.check_parameter_count, ch11.check_next_token_loss):
        assert [x for x in numbers if check(x).correct] == []
        assert [x for x in numbers if check(lambda *args, x=x: x).correct] == []  # nor a function returning one


# --- chapter 14 ---------------------------------------------------------------------------------

def accumulate_right(model, x, y, grad_accum):
    m = x.shape[0] // grad_accum
    for i in range(grad_accum):
        (model(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m])[1] / grad_accum).backward()


def accumulate_without_dividing(model, x, y, grad_accum):
    m = x.shape[0] // grad_accum
    for i in range(grad_accum):
        model(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m])[1].backward()


def whole_batch_at_once(model, x, y, grad_accum):
    model(x, y)[1].backward()


def test_ch14_accumulated_gradient():
    assert ch14.check_accumulated_gradient(accumulate_right).correct
    wrong = ch14.check_accumulated_gradient(accumulate_without_dividing)
    assert wrong.status == "wrong" and "x the whole-batch one" in wrong.message  # grad_accum times too large
    assert ch14.check_accumulated_gradient(whole_batch_at_once).status == "wrong"  # right gradient, no accumulation
    assert ch14.check_accumulated_gradient(lambda *args: 1 / 0).status == "wrong"
    untried = ch14.check_accumulated_gradient(None)
    assert untried.status == "not attempted" and "slice" not in untried.message  # no hint before a try


def wsd_by_hand(step, steps, warmup, decay_steps, lr, min_lr):
    """Written from the exercise's text, independently of the checker's reference."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step < steps - decay_steps:
        return lr
    left = steps - 1 - step  # steps still to come after this one: 0 at the last step
    return min_lr + (lr - min_lr) * left / decay_steps


def test_ch14_wsd_schedule():
    assert ch14.check_wsd_schedule(wsd_by_hand).correct
    def off_by_one(step, steps, warmup, decay_steps, lr, min_lr):  # decay starts one step late
        start = steps - decay_steps
        return wsd_by_hand(step, steps, warmup, decay_steps, lr, min_lr) if step != start else lr
    assert ch14.check_wsd_schedule(off_by_one).status == "wrong"

    def cosine(step, steps, warmup, decay_steps, lr, min_lr):  # the library's schedule is another one
        from slmbook.training import learning_rate
        from slmbook.training_config import TrainConfig
        return learning_rate(step, TrainConfig(steps=steps, warmup_steps=warmup, lr=lr, min_lr_ratio=min_lr / lr))
    assert ch14.check_wsd_schedule(cosine).status == "wrong"
    assert ch14.check_wsd_schedule(None).status == "not attempted"


def test_ch14_first_step_ratio():
    # Adam's first step moves every weight by exactly lr (m = g, v = g**2 after bias correction)
    torch.manual_seed(ch14.FIRST_STEP_SEED)
    model = QwenModel(ch14.EXERCISE_CONFIG)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    right = ch14.FIRST_STEP_LR * math.sqrt(weights.numel()) / weights.norm().item()
    assert ch14.check_first_step_ratio(right).correct
    assert ch14.check_first_step_ratio(ch14.FIRST_STEP_LR).status == "wrong"  # lr alone is not the ratio
    assert ch14.check_first_step_ratio(right * 1.05).status == "wrong"
    assert ch14.check_first_step_ratio("a lot").status == "wrong"
    untried = ch14.check_first_step_ratio(None)
    assert untried.status == "not attempted" and "bias-corrected" not in untried.message


def test_ch14_no_checker_passes_on_a_number_printed_in_the_chapter():
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "14_training.ipynb").read_text())
    text = "\n".join("".join(out.get("text", "")) + "".join("".join(v) for k, v in out.get("data", {}).items()
                                                            if k.startswith("text/"))
                     for cell in nb["cells"] for out in cell.get("outputs", []))
    numbers = set()
    for number, percent in re.findall(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)(%?)", text):
        value = float(number.replace(",", ""))
        numbers |= {value, value / 100} if percent else {value}
    assert len(numbers) > 20  # the notebook has stored outputs to search
    assert [x for x in numbers if ch14.check_first_step_ratio(x).correct] == []
