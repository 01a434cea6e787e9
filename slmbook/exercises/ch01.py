"""Chapter 1's exercises: one gradient by the chain rule, and Adam's first step."""

from __future__ import annotations

import math

import torch

from slmbook.exercises import Result, verdict

# The neuron of the first exercise: y = sigmoid(w . x + b), loss L = (y - target)^2
NEURON = {"w": (0.5, -1.0), "b": 0.1, "x": (1.0, 2.0), "target": 1.0}

# Adam's first step: lr, starting value and gradient
ADAM = {"lr": 0.01, "p": 1.0, "g": 250.0}


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
    expected = neuron_gradient()
    values = _numbers(answer, 3)
    ok = values is not None and all(abs(a - e) <= 1e-6 for a, e in zip(values, expected))
    return verdict("chapter 1: a neuron's gradient", answer, ok,
                   hint="z = w.x + b, y = sigmoid(z); dL/dy = 2 (y - 1), dy/dz = y (1 - y), "
                        "dz/dw_i = x_i, dz/db = 1: multiply along the chain",
                   success=f"correct: {[round(v, 6) for v in expected]}, the same as torch.autograd")


def adam_first_step() -> float:
    """The parameter after one torch.optim.Adam step (the reference)."""
    p = torch.tensor([ADAM["p"]], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([p], lr=ADAM["lr"])
    p.grad = torch.tensor([ADAM["g"]], dtype=torch.float64)
    optimizer.step()
    return p.item()


def check_adam_first_step(answer) -> Result:
    """Adam (lr = 0.01, betas = (0.9, 0.999), eps = 1e-8) starts at p = 1.0 and gets the gradient
    g = 250. What is p after the first step? (within 1e-9)"""
    expected = adam_first_step()
    values = _numbers([answer] if not isinstance(answer, (list, tuple)) else answer, 1)
    ok = values is not None and abs(values[0] - expected) <= 1e-9
    return verdict("chapter 1: Adam's first step", answer, ok,
                   hint="after one step m = 0.1 g and v = 0.001 g^2; the bias corrections divide them by "
                        "1 - 0.9 and 1 - 0.999, so m_hat = g and v_hat = g^2",
                   success=f"correct: {expected:.9f}. The step is lr * g / (|g| + eps), about lr, "
                           "whatever the size of g: Adam's steps have the scale of lr, not of the gradient")
