"""SGD, momentum, Adam and AdamW written out line by line (chapter 1).

Each optimizer takes a list of plain tensors and, at every `step(grads)`, updates them in place
with the formula in its docstring. The tests check every step against `torch.optim` with the same
hyperparameters, so these few lines are exactly what PyTorch does, not a simplified cousin.

The 2-D loss surfaces at the end (`SURFACES`, `race`) are where chapter 1 lets the optimizers race.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# Extra tensors, each the size of the parameters, that an optimizer keeps between steps: chapter 3's
# memory estimator reads this table (Adam's two moments are why it needs 3x the memory of SGD).
STATE_TENSORS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok or math.isinf(value):
        raise ValueError(f"{name}={value!r}: must be a finite number {'>= 0' if allow_zero else '> 0'}")


class Optimizer:
    """Holds the parameters and a step counter; subclasses write the update."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = list(params)
        if not self.params or not all(isinstance(p, torch.Tensor) for p in self.params):
            raise TypeError(f"params must be a non-empty list of tensors, got {params!r}")
        self.t = 0

    def step(self, grads: list[torch.Tensor]) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        for p, g in zip(self.params, grads, strict=True):
            if g.shape != p.shape:
                raise ValueError(f"gradient shape {tuple(g.shape)} does not match parameter {tuple(p.shape)}")
        self.t += 1
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
                self._update(i, p, g)

    def _update(self, i: int, p: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (torch.optim.SGD's formulas):

        g <- g + weight_decay * p
        v <- g                          on the first step
        v <- momentum * v + g           afterwards        (momentum > 0 only)
        p <- p - lr * v                 (or p - lr * (g + momentum * v) with nesterov)

    Momentum is a running sum of past gradients: directions that agree step after step build up
    speed, directions that flip sign cancel out.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params)
        _check_positive("lr", lr)
        _check_positive("momentum", momentum, allow_zero=True)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        if momentum >= 1:
            raise ValueError(f"momentum={momentum!r}: must be < 1 or the velocity grows without bound")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.velocity: list[torch.Tensor | None] = [None] * len(self.params)

    def _update(self, i, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            if self.velocity[i] is None:
                self.velocity[i] = g.clone()
            else:
                self.velocity[i] = self.momentum * self.velocity[i] + g
            g = g + self.momentum * self.velocity[i] if self.nesterov else self.velocity[i]
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as torch.optim.Adam computes it:

        g <- g + weight_decay * p                  (L2 penalty folded into the gradient)
        m <- beta1 * m + (1 - beta1) * g           (running mean of gradients: direction)
        v <- beta2 * v + (1 - beta2) * g^2         (running mean of squares: scale)
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)   (undo the bias of starting at 0)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    Dividing by sqrt(v_hat) gives every parameter its own step size of about lr, whatever the
    scale of its gradient.
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params)
        _check_positive("lr", lr)
        _check_positive("eps", eps)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas={betas!r}: need two numbers in [0, 1)")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def _update(self, i, p, g):
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        self.m[i] = beta1 * self.m[i] + (1 - beta1) * g
        self.v[i] = beta2 * self.v[i] + (1 - beta2) * g * g
        m_hat = self.m[i] / (1 - beta1**self.t)
        v_hat = self.v[i] / (1 - beta2**self.t)
        p -= self.lr * m_hat / (torch.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam whose weight decay shrinks the weights directly,

        p <- p * (1 - lr * weight_decay)     then the Adam step without any L2 term,

    so the decay is not rescaled by sqrt(v_hat) as Adam's L2 penalty is. Default weight_decay=0.01
    as in torch.optim.AdamW; the book trains its model with AdamW in chapter 14.
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


# ----------------------------------------------------------------------------------------------
# 2-D loss surfaces to race on
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """A loss over two parameters (x, y), its hand-derived gradient and where its minimum is."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]  # (..., 2) -> (...)
    grad: Callable[[torch.Tensor], torch.Tensor]  # (2,) -> (2,)
    minimum: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]


def _rosenbrock(p):
    x, y = p[..., 0], p[..., 1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _rosenbrock_grad(p):
    x, y = p[0], p[1]
    return torch.stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def _ravine(p):
    """An ill-conditioned bowl: 50 times steeper across (y) than along (x)."""
    x, y = p[..., 0], p[..., 1]
    return 0.5 * (x * x + 50 * y * y)


def _ravine_grad(p):
    return torch.stack([p[0], 50 * p[1]])


def _beale(p):
    x, y = p[..., 0], p[..., 1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _beale_grad(p):
    x, y = p[0], p[1]
    a, b, c = 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3
    dx = 2 * a * (y - 1) + 2 * b * (y**2 - 1) + 2 * c * (y**3 - 1)
    dy = 2 * a * x + 2 * b * 2 * x * y + 2 * c * 3 * x * y**2
    return torch.stack([dx, dy])


SURFACES = {
    "rosenbrock": Surface("rosenbrock", _rosenbrock, _rosenbrock_grad, (1.0, 1.0), (-2.0, 2.0), (-1.0, 3.0)),
    "ravine": Surface("ravine", _ravine, _ravine_grad, (0.0, 0.0), (-11.0, 11.0), (-3.0, 3.0)),
    "beale": Surface("beale", _beale, _beale_grad, (3.0, 0.5), (-4.5, 4.5), (-4.5, 4.5)),
}


def surface(name: str) -> Surface:
    if name not in SURFACES:
        raise ValueError(f"surface={name!r} is unknown; allowed: {sorted(SURFACES)}")
    return SURFACES[name]


def race(surface_name: str, optimizers: dict[str, Callable[[list[torch.Tensor]], Optimizer]],
         start: tuple[float, float], steps: int) -> dict[str, torch.Tensor]:
    """Run each optimizer from `start` for `steps` steps; return each one's path, (steps + 1, 2).

    `optimizers` maps a label to a function that builds the optimizer for a parameter list, e.g.
    {"SGD": lambda ps: SGD(ps, lr=1e-3)}.
    """
    surf = surface(surface_name)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a positive integer")
    paths = {}
    for label, make in optimizers.items():
        point = torch.tensor(start, dtype=torch.float64)
        opt = make([point])
        path = [point.clone()]
        for _ in range(steps):
            opt.step([surf.grad(point)])
            path.append(point.clone())
        paths[label] = torch.stack(path)
    return paths
