"""The optimizers written out in slmbook.optimizers, step by step against torch.optim."""

import pytest
import torch

from slmbook import optimizers as opt

CASES = [
    ("sgd", dict(lr=0.1), torch.optim.SGD),
    ("sgd", dict(lr=0.05, momentum=0.9), torch.optim.SGD),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), torch.optim.SGD),
    ("adam", dict(lr=0.01), torch.optim.Adam),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), torch.optim.Adam),
    ("adamw", dict(lr=0.01), torch.optim.AdamW),
    ("adamw", dict(lr=0.003, betas=(0.9, 0.95), weight_decay=0.1), torch.optim.AdamW),
]


@pytest.mark.parametrize("name,kwargs,reference", CASES)
def test_every_step_matches_torch_optim(name, kwargs, reference):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    mine = [p.clone() for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    my_opt = opt.OPTIMIZERS[name](mine, **kwargs)
    ref_opt = reference(theirs, **kwargs)
    for step in range(25):
        # a gradient that depends on the current point, as a real loss's would
        grads = [torch.sin(3 * p) + 0.1 * step for p in mine]
        for p, grad in zip(theirs, [torch.sin(3 * p.detach()) + 0.1 * step for p in theirs], strict=True):
            p.grad = grad
        my_opt.step(grads)
        ref_opt.step()
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12, msg=f"step {step + 1}")


def test_adam_first_step_has_size_lr_whatever_the_gradient_scale():
    """Bias correction makes Adam's first step exactly lr * sign(g) (up to eps)."""
    p = torch.zeros(3, dtype=torch.float64)
    opt.Adam([p], lr=0.1).step([torch.tensor([1e-4, -5.0, 300.0], dtype=torch.float64)])
    torch.testing.assert_close(p, torch.tensor([-0.1, 0.1, -0.1], dtype=torch.float64), rtol=1e-3, atol=0)


def test_momentum_remembers_while_plain_sgd_does_not():
    a, b = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    plain, heavy = opt.SGD([a], lr=1.0), opt.SGD([b], lr=1.0, momentum=0.5)
    for g in (1.0, 0.0):
        plain.step([torch.tensor([g], dtype=torch.float64)])
        heavy.step([torch.tensor([g], dtype=torch.float64)])
    assert a.item() == -1.0  # the second (zero) gradient does nothing
    assert b.item() == -1.5  # velocity 0.5 keeps moving


@pytest.mark.parametrize("make,match", [
    (lambda ps: opt.SGD(ps, lr=0), "lr=0"),
    (lambda ps: opt.SGD(ps, lr=0.1, momentum=1.0), "momentum=1.0"),
    (lambda ps: opt.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: opt.Adam(ps, betas=(0.9, 1.0)), "betas"),
    (lambda ps: opt.Adam(ps, eps=-1.0), "eps=-1.0"),
    (lambda ps: opt.AdamW(ps, weight_decay=-0.1), "weight_decay=-0.1"),
])
def test_bad_hyperparameters_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(2)])


def test_bad_steps_are_rejected():
    with pytest.raises(TypeError, match="params"):
        opt.SGD([], lr=0.1)
    o = opt.SGD([torch.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="gradients for 1 parameters"):
        o.step([])
    with pytest.raises(ValueError, match="does not match"):
        o.step([torch.zeros(3)])


@pytest.mark.parametrize("name", sorted(opt.SURFACES))
def test_surface_gradients_match_autograd_and_vanish_at_the_minimum(name):
    surf = opt.surface(name)
    for point in [(0.3, -0.7), (-1.2, 1.0), (2.0, 0.1)]:
        p = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        (ref,) = torch.autograd.grad(surf.fn(p), p)
        torch.testing.assert_close(surf.grad(p.detach()), ref)
    minimum = torch.tensor(surf.minimum, dtype=torch.float64)
    assert surf.fn(minimum).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(surf.grad(minimum), torch.zeros(2, dtype=torch.float64))


def test_race_paths_and_momentum_beats_sgd_in_the_ravine():
    paths = opt.race("ravine", {
        "SGD": lambda ps: opt.SGD(ps, lr=0.019),
        "Momentum": lambda ps: opt.SGD(ps, lr=0.019, momentum=0.9),
        "Adam": lambda ps: opt.Adam(ps, lr=0.3),
    }, start=(-10.0, 2.0), steps=100)
    assert set(paths) == {"SGD", "Momentum", "Adam"}
    assert all(path.shape == (101, 2) for path in paths.values())
    assert paths["SGD"][0].tolist() == [-10.0, 2.0]
    fn = opt.surface("ravine").fn
    assert fn(paths["Momentum"][-1]) < 1e-2 * fn(paths["SGD"][-1])
    with pytest.raises(ValueError, match="surface='bowl'"):
        opt.race("bowl", {}, (0.0, 0.0), 1)


def test_state_table_matches_what_the_optimizers_keep():
    # torch's optimizers: the tensors of a parameter's shape each keeps after one step
    for name, make in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                       ("momentum", lambda q: torch.optim.SGD(q, lr=0.1, momentum=0.9)),
                       ("sgd", lambda q: torch.optim.SGD(q, lr=0.1))):
        w = torch.nn.Parameter(torch.zeros(3))
        reference = make([w])
        w.grad = torch.ones(3)
        reference.step()
        kept = sum(isinstance(v, torch.Tensor) and v.shape == w.shape for v in reference.state[w].values())
        assert opt.STATE_TENSORS[name] == kept, name
    # ours keep the same
    p = [torch.zeros(3)]
    momentum = opt.SGD(p, lr=0.1, momentum=0.9)
    momentum.step([torch.ones(3)])
    assert opt.STATE_TENSORS["momentum"] == sum(v is not None for v in momentum.velocity)
    plain = opt.SGD(p, lr=0.1)
    plain.step([torch.ones(3)])
    assert opt.STATE_TENSORS["sgd"] == sum(v is not None for v in plain.velocity)
