"""Chapter 1's exercises: one gradient by the chain rule, and two steps of Adam."""

from __future__ import annotations

import math

import torch

from slmbook.exercises import Result, not_attempted, verdict

# The neuron of the first exercise: y = sigmoid(w . x + b), loss L = (y - target)^2
NEURON = {"w": (0.5, -1.0), "b": 0.1, "x": (1.0, 2.0), "target": 1.0}

# Two steps of Adam: lr, starting value and the gradients of steps 1 and 2 (the second one turned around)
ADAM = {"lr": 0.01, "p": 1.0, "grads": (250.0, -50.0)}


def _numbers(answer, n: int) -> list[float] | None:
    """The answer as n floats, or None if it is not n numbers."""
    try:
        values = [float(v) for v in (answer.tolist() if isinstance(answer, torch.Tensor) else answer)]
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(math.isfinite(v) for v in values) else None


def neuron_gradient() -> list[float]:
    """[dL/dw1, dL/dw2, dL/db] computed by torch.autograd (the reference)."""
    w = torch.tensor(NEURON["w"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(NEURON["b"], dtype=torch.float64, requires_grad=True)
    x = torch.tensor(NEURON["x"], dtype=torch.float64)
    loss = (torch.sigmoid(w @ x + b) - NEURON["target"]) ** 2
    loss.backward()
    return [*w.grad.tolist(), b.grad.item()]


def check_neuron_gradient(answer) -> Result:
    """A sigmoid neuron with w = (0.5, -1.0), b = 0.1 sees x = (1.0, 2.0); its target is 1.0 and the
    loss is (y - 1.0)^2. Give [dL/dw1, dL/dw2, dL/db], computed by hand (within 1e-6)."""
    name = "chapter 1: a neuron's gradient"
    if answer is None:
        return not_attempted(name)
    expected = neuron_gradient()
    values = _numbers(answer, 3)
    ok = values is not None and all(abs(a - e) <= 1e-6 for a, e in zip(values, expected, strict=True))
    return verdict(name, answer, ok,
                   hint="z = w.x + b, y = sigmoid(z); dL/dy = 2 (y - 1), dy/dz = y (1 - y), "
                        "dz/dw_i = x_i, dz/db = 1: multiply along the chain",
                   success=f"correct: {[round(v, 6) for v in expected]}, the same as torch.autograd")


def adam_two_steps() -> float:
    """The parameter after two torch.optim.Adam steps with ADAM's gradients (the reference)."""
    p = torch.tensor([ADAM["p"]], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([p], lr=ADAM["lr"])
    for g in ADAM["grads"]:
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
    return p.item()


def check_adam_two_steps(answer) -> Result:
    """Adam (lr = 0.01, betas = (0.9, 0.999), eps = 1e-8) starts at p = 1.0. Its first gradient is
    g1 = 250, its second g2 = -50. What is p after the second step? (within 1e-6: float32 will do)"""
    name = "chapter 1: two steps of Adam"
    if answer is None:
        return not_attempted(name)
    expected = adam_two_steps()
    values = _numbers([answer] if not isinstance(answer, (list, tuple)) else answer, 1)
    ok = values is not None and abs(values[0] - expected) <= 1e-6
    lr, p0, (g1, g2) = ADAM["lr"], ADAM["p"], ADAM["grads"]
    after_one = p0 - lr * g1 / (abs(g1) + 1e-8)
    if values is not None and not ok:
        if abs(values[0] - after_one) <= 1e-6:
            return Result(name, "wrong", "that is p after the first step; take one more")
        if abs(values[0] - (p0 - lr * (g1 + g2))) <= 1e-6:
            return Result(name, "wrong", "that is plain gradient descent; Adam divides by the running RMS of g")
    return verdict(name, answer, ok,
                   hint="keep m and v from step 1 (m = 0.1 g1, v = 0.001 g1^2), update both with g2, then divide "
                        "by the bias corrections of step t = 2: 1 - 0.9^2 and 1 - 0.999^2",
                   success=f"correct: {expected:.9f}. The gradient turned around, yet p kept going down: m "
                           "still remembers the large first gradient. And the step is smaller than lr: "
                           "m_hat / sqrt(v_hat) falls below 1 once the gradients disagree")
