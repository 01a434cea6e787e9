"""Chapter 2's exercises, one per section: dtypes, views, indexing, broadcasting, autograd, modules
and devices. Functions you write are checked on fresh random inputs against a reference."""

from __future__ import annotations

import math

import torch

from slmbook.exercises import Result, close, verdict


def _run(fn, *args):
    """fn(*args), or the exception it raised (a reader's function may fail: that is a wrong answer)."""
    try:
        return fn(*args)
    except Exception as error:  # noqa: BLE001 - any error in the reader's code means "not yet"
        return error


def _same(result, expected) -> bool:
    return (isinstance(result, torch.Tensor) and result.shape == expected.shape
            and torch.allclose(result.double(), expected.double(), rtol=1e-6, atol=1e-9))


def _wrong_because(name, hint, why) -> Result:
    return Result(name, "wrong", f"not yet: {why}. Hint: {hint}")


# -- tensors and dtypes ----------------------------------------------------------------------------

def check_bf16_gap(answer) -> Result:
    """What is the gap between 1.0 and the next larger number a bfloat16 can hold? (a float)"""
    expected = torch.finfo(torch.bfloat16).eps
    return verdict("chapter 2: bfloat16's gap above 1.0", answer, close(answer, expected, rel=1e-9),
                   hint="bfloat16 keeps 7 mantissa bits after the leading 1; try halving x while "
                        "torch.tensor(1.0 + x, dtype=torch.bfloat16) != 1.0",
                   success=f"correct: {expected} = 2^-7. Near 1.0, bfloat16 cannot tell 1.000 from 1.003")


# -- shapes, reshaping and views -------------------------------------------------------------------

def _split_heads_reference(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    batch, seq, dim = x.shape
    head_dim = dim // n_heads
    out = torch.empty(batch, n_heads, seq, head_dim, dtype=x.dtype)
    for h in range(n_heads):
        out[:, h] = x[:, :, h * head_dim:(h + 1) * head_dim]
    return out


def check_split_heads(fn) -> Result:
    """Write fn(x, n_heads): x of shape (batch, seq, dim) -> (batch, n_heads, seq, dim // n_heads),
    head h holding channels h*head_dim .. (h+1)*head_dim - 1 (the layout attention uses)."""
    name = "chapter 2: split into heads"
    hint = "x.view(batch, seq, n_heads, head_dim) then swap the seq and heads axes with .transpose(1, 2)"
    if fn is None:
        return verdict(name, None, False, hint)
    g = torch.Generator().manual_seed(2)
    for shape, heads in (((2, 5, 12), 3), ((1, 7, 16), 4), ((3, 2, 8), 8)):
        x = torch.randn(*shape, generator=g)
        result = _run(fn, x, heads)
        if not _same(result, _split_heads_reference(x, heads)):
            return _wrong_because(name, hint, f"wrong result for shape {shape} with {heads} heads")
    return verdict(name, fn, True, hint, success="correct: a view and a transpose, no data copied")


# -- indexing --------------------------------------------------------------------------------------

def check_pick_targets(fn) -> Result:
    """Write fn(logits, targets): logits (N, C), targets (N,) class indices -> (N,) with
    logits[i, targets[i]] for every row i, without a Python loop (the cross-entropy's key step)."""
    name = "chapter 2: pick each row's target"
    hint = "index with two tensors: logits[torch.arange(N), targets] (or logits.gather(1, targets[:, None]))"
    if fn is None:
        return verdict(name, None, False, hint)
    g = torch.Generator().manual_seed(3)
    for n, c in ((4, 10), (9, 3), (1, 50)):
        logits, targets = torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
        expected = torch.tensor([logits[i, targets[i]].item() for i in range(n)])
        if not _same(_run(fn, logits, targets), expected):
            return _wrong_because(name, hint, f"wrong result for logits of shape {(n, c)}")
    return verdict(name, fn, True, hint)


# -- broadcasting ----------------------------------------------------------------------------------

def check_pairwise_sq_distances(fn) -> Result:
    """Write fn(a, b): a (N, D), b (M, D) -> (N, M) with the squared distance |a_i - b_j|^2, by
    broadcasting (no loop)."""
    name = "chapter 2: pairwise squared distances"
    hint = "a[:, None, :] - b[None, :, :] has shape (N, M, D); square and sum over the last axis"
    if fn is None:
        return verdict(name, None, False, hint)
    g = torch.Generator().manual_seed(4)
    for n, m, d in ((3, 4, 2), (5, 1, 7), (6, 6, 3)):
        a, b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)
        if not _same(_run(fn, a, b), torch.cdist(a, b) ** 2):
            return _wrong_because(name, hint, f"wrong result for a {(n, d)} and b {(m, d)}")
    return verdict(name, fn, True, hint)


# -- autograd --------------------------------------------------------------------------------------

def check_derivative(answer) -> Result:
    """Use autograd: the derivative of f(x) = x^3 * sin(x) at x = 2.0 (a float, within 1e-6)."""
    x = 2.0
    expected = 3 * x**2 * math.sin(x) + x**3 * math.cos(x)  # the product rule, by hand
    return verdict("chapter 2: a derivative by autograd", answer,
                   close(answer, expected, rel=0, abs_tol=1e-6),
                   hint="x = torch.tensor(2.0, requires_grad=True); y = x**3 * torch.sin(x); "
                        "y.backward(); x.grad",
                   success=f"correct: {expected:.6f}, as the product rule gives 3x^2 sin x + x^3 cos x")


# -- modules ---------------------------------------------------------------------------------------

def check_two_layer_module(cls) -> Result:
    """Write an nn.Module class TwoLayer(d_in, d_hidden, d_out): Linear(d_in, d_hidden) -> ReLU ->
    Linear(d_hidden, d_out). Its parameters must be registered (so optimizers see them)."""
    name = "chapter 2: a two-layer module"
    hint = ("subclass torch.nn.Module, call super().__init__() first, assign the layers as attributes "
            "(self.fc1 = nn.Linear(...)), and write forward(self, x)")
    if cls is None:
        return verdict(name, None, False, hint)
    model = _run(cls, 3, 16, 2)
    if not isinstance(model, torch.nn.Module):
        return _wrong_because(name, hint, "TwoLayer(3, 16, 2) is not a torch.nn.Module")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != 3 * 16 + 16 + 16 * 2 + 2:
        return _wrong_because(name, hint, f"{n_params} registered parameters, expected 98")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 2:
        return _wrong_because(name, hint, f"found {len(linears)} nn.Linear layers, expected 2")
    first, second = sorted(linears, key=lambda m: m.in_features != 3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))
    expected = torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    out = _run(model, x)
    if not _same(out, expected.detach()):
        return _wrong_because(name, hint, "its output is not fc2(relu(fc1(x)))")
    return verdict(name, cls, True, hint, success="correct: 98 parameters, all registered")


# -- devices ---------------------------------------------------------------------------------------

def check_to_device(fn) -> Result:
    """Write fn(batch, device): a dict of tensors (and other values) -> a new dict with every tensor
    on `device` and everything else unchanged. Checked with the 'meta' device, which every machine has."""
    name = "chapter 2: a batch to a device"
    hint = "{key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}"
    if fn is None:
        return verdict(name, None, False, hint)
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "targets": torch.ones(2, 8, dtype=torch.long),
             "mask": torch.ones(2, 8, dtype=torch.bool), "n_stories": 2, "source": "sample"}
    result = _run(fn, batch, torch.device("meta"))
    if not isinstance(result, dict) or set(result) != set(batch):
        return _wrong_because(name, hint, "the result must be a dict with the same keys")
    for key, value in batch.items():
        moved = result[key]
        if isinstance(value, torch.Tensor):
            if not isinstance(moved, torch.Tensor) or moved.device.type != "meta" or moved.shape != value.shape \
                    or moved.dtype != value.dtype:
                return _wrong_because(name, hint, f"{key!r} is not the same tensor on the device")
        elif moved != value:
            return _wrong_because(name, hint, f"{key!r} should be left unchanged")
    if batch["input_ids"].device.type != "cpu":
        return _wrong_because(name, hint, "the input batch was changed")
    return verdict(name, fn, True, hint)
