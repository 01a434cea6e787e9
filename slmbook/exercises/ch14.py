"""Chapter 14's exercises: gradient accumulation by hand, a warm-up/stable/decay schedule, and the size of
AdamW's first step. The first two are checked on fresh random inputs, the third against a real step."""

from __future__ import annotations

import math
import random

import torch

from slmbook.config import QwenConfig
from slmbook.exercises import Result, not_attempted, verdict

# The model of the exercises: small, and not one the chapter trains or prints.
EXERCISE_CONFIG = QwenConfig(vocab_size=512, context_length=64, dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
                             hidden_dim=128)
FIRST_STEP_LR = 2e-3  # exercise 3: the learning rate of the first AdamW step
FIRST_STEP_SEED = 14  # exercise 3: torch.manual_seed before building the model


def _call(name: str, fn, *args):
    """fn(*args), or a 'wrong' Result saying what it raised."""
    try:
        return fn(*args), None
    except Exception as error:  # the reader's code: report, never crash the notebook
        return None, Result(name, "wrong", f"your function raised {type(error).__name__}: {error}")


def check_accumulated_gradient(fn) -> Result:
    """fn(model, x, y, grad_accum) runs `grad_accum` forward and backward passes over equal slices of the
    batch (x, y) and leaves in every parameter's .grad the gradient of the mean loss over the WHOLE batch
    (model(x, y) returns (logits, loss), the loss a mean over its tokens). Checked on fresh random models
    and batches against one backward pass over the whole batch."""
    from slmbook.qwen import QwenModel

    name = "chapter 14: gradient accumulation"
    hint = ("call the model once per slice x[i*m:(i+1)*m] (m = batch // grad_accum) and call backward on each "
            "slice's loss divided by grad_accum: backward adds into .grad, so the pieces sum to the mean")
    if fn is None:
        return not_attempted(name)
    rng = random.Random()
    for grad_accum in (2, 4):
        seed = rng.randrange(2**31)
        with torch.random.fork_rng():  # the notebook's own random state is left as it was
            torch.manual_seed(seed)
            model = QwenModel(EXERCISE_CONFIG)
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, EXERCISE_CONFIG.vocab_size, (2 * grad_accum, 17), generator=generator)
        x, y = tokens[:, :-1], tokens[:, 1:]
        model.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        sizes = []
        hook = model.register_forward_hook(lambda module, args, output, sizes=sizes: sizes.append(args[0].shape[0]))
        try:
            _, error = _call(name, fn, model, x.clone(), y.clone(), grad_accum)
        finally:
            hook.remove()
        if error is not None:
            return error
        if sizes != [x.shape[0] // grad_accum] * grad_accum:
            return verdict(name, fn, False, hint=f"{hint} (with a batch of {x.shape[0]} and grad_accum={grad_accum} "
                                                 f"the model ran on batches of {sizes})")
        for n, p in model.named_parameters():
            if p.grad is None or not torch.allclose(p.grad, expected[n], rtol=1e-4, atol=1e-6):
                ratio = (p.grad.norm() / expected[n].norm()).item() if p.grad is not None else 0.0
                return verdict(name, fn, False, hint=f"{hint} ({n}'s gradient is {ratio:.3g} x the whole-batch one "
                                                     f"with grad_accum={grad_accum})")
    return verdict(name, fn, True, hint=hint,
                   success="correct: the same gradient as one pass over the whole batch, in a fraction of the "
                           "activation memory")


def _wsd_learning_rate(step: int, steps: int, warmup: int, decay_steps: int, lr: float, min_lr: float) -> float:
    """The warm-up / stable / decay schedule of exercise 2 (the checker's reference)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    start = steps - decay_steps
    if step < start:
        return lr
    return lr - (lr - min_lr) * (step - start + 1) / decay_steps


def check_wsd_schedule(fn) -> Result:
    """fn(step, steps, warmup, decay_steps, lr, min_lr): the warm-up / stable / decay ("WSD") schedule.
    Steps 0 .. warmup-1 rise linearly, lr * (step + 1) / warmup, as in slmbook.training.learning_rate;
    then the rate stays at lr; over the last decay_steps steps it falls linearly, step s getting
    lr - (lr - min_lr) * (s - start + 1) / decay_steps with start = steps - decay_steps, so that the
    last step (steps - 1) gets exactly min_lr. Checked at every step of fresh random schedules."""
    name = "chapter 14: a warm-up / stable / decay schedule"
    hint = ("three cases by step: step < warmup; warmup <= step < steps - decay_steps (constant lr); and the "
            "decay, whose first step is already one notch below lr and whose last step is min_lr")
    if fn is None:
        return not_attempted(name)
    rng = random.Random()
    for _ in range(5):
        steps = rng.randint(30, 400)
        warmup = rng.randint(1, steps // 4)
        decay_steps = rng.randint(1, steps - warmup)
        lr = 10 ** rng.uniform(-4, -2)
        min_lr = lr * rng.choice((0.0, 0.1, 0.3))
        for step in range(steps):
            expected = _wsd_learning_rate(step, steps, warmup, decay_steps, lr, min_lr)
            got, error = _call(name, fn, step, steps, warmup, decay_steps, lr, min_lr)
            if error is not None:
                return error
            try:
                ok = math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-12)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                return verdict(name, fn, False, hint=f"{hint} (steps={steps}, warmup={warmup}, decay_steps="
                                                     f"{decay_steps}: wrong at step {step})")
    return verdict(name, fn, True, hint=hint, success="correct: warm-up, a long flat stretch, and a short linear decay")


def _first_step_update_ratio(lr: float = FIRST_STEP_LR, seed: int = FIRST_STEP_SEED) -> float:
    """The reference of exercise 3: ||w1 - w0|| / ||w0|| after one torch.optim.AdamW step (default betas
    and eps, weight_decay=0) of QwenModel(EXERCISE_CONFIG), built after torch.manual_seed(seed), on a
    random batch."""
    from slmbook.qwen import QwenModel
    from slmbook.training import update_ratio

    with torch.random.fork_rng():  # the notebook's own random state is left as it was
        torch.manual_seed(seed)
        model = QwenModel(EXERCISE_CONFIG)
    tokens = torch.randint(0, EXERCISE_CONFIG.vocab_size, (4, 33), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model(tokens[:, :-1], tokens[:, 1:])[1].backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    return update_ratio(before, list(model.parameters()))


def check_first_step_ratio(answer) -> Result:
    """The update / weight ratio ||w1 - w0|| / ||w0|| of the first AdamW step (lr=FIRST_STEP_LR, default
    betas and eps, no weight decay) of QwenModel(EXERCISE_CONFIG) built after
    torch.manual_seed(FIRST_STEP_SEED). Within 2%; checked against the real step."""
    name = "chapter 14: the size of AdamW's first step"
    if answer is None:
        return not_attempted(name)
    expected = _first_step_update_ratio()
    try:
        ok = math.isclose(float(answer), expected, rel_tol=0.02)
    except (TypeError, ValueError):
        ok = False
    return verdict(name, answer, ok=ok,
                   hint="at the first step Adam's bias-corrected moments are m = g and v = g**2, so each weight "
                        "moves by lr * g / |g|: exactly lr, whatever its gradient. Sum lr**2 over all parameters, "
                        "take the root, divide by the norm of all the initial weights",
                   success=f"correct: {expected:.4f}, lr / rms(weights): why early ratios are far above the "
                           f"1e-3 of a run in its stride")
