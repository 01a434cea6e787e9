"""Chapter 2's exercises, one per section: dtypes, views, indexing, broadcasting, autograd, modules
and devices. Functions you write are checked on fresh random inputs against a reference; a hint
appears only after a wrong try."""

from __future__ import annotations

import math

import torch

from slmbook.exercises import Result, exact_int, not_attempted, verdict


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

def first_integer_not_stored(dtype: torch.dtype) -> int:
    """The smallest positive integer that `dtype` cannot hold exactly, found by trying them in turn
    (the reference; the rule behind it is 2^(mantissa bits + 1) + 1)."""
    integers = torch.arange(1, 2**12 + 2, dtype=torch.float64)  # enough for the 16-bit formats
    lost = integers[integers.to(dtype).double() != integers]
    if len(lost) == 0:
        raise ValueError(f"dtype={dtype}: stores every integer up to {2**12 + 1}; only 16-bit floats are allowed")
    return int(lost[0])


def check_bf16_first_lost_integer(answer) -> Result:
    """What is the smallest positive integer that a bfloat16 cannot store exactly? (an int)"""
    name = "chapter 2: the first integer bfloat16 loses"
    if answer is None:
        return not_attempted(name)
    expected = first_integer_not_stored(torch.bfloat16)
    if exact_int(answer, first_integer_not_stored(torch.float16)):
        return Result(name, "wrong", "that is float16's, which has 3 more mantissa bits than bfloat16")
    if isinstance(answer, float) and answer == expected:
        return Result(name, "wrong", "the right number, but give it as an int (int(...)), as the question asks")
    if isinstance(answer, int) and answer > 0 and answer & (answer - 1) == 0:
        return Result(name, "wrong", f"{answer} is a power of two: every format stores those exactly")
    return verdict(name, answer, exact_int(answer, expected),
                   hint="between 2^k and 2^(k+1) a format with m mantissa bits has 2^m evenly spaced numbers: "
                        "find the first k where that spacing exceeds 1 (or round-trip integers through "
                        "torch.bfloat16 and watch for the first that comes back changed)",
                   success=f"correct: bfloat16 rounds {expected} to {int(torch.tensor(float(expected)).bfloat16())}. "
                           f"Above {expected - 1} bfloat16 cannot count by ones: keep counters and token ids in "
                           "integer dtypes, and sums in float32")


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
    head h holding channels h*head_dim .. (h+1)*head_dim - 1 (the layout attention uses), as a view
    of x: no data copied."""
    name = "chapter 2: split into heads"
    if fn is None:
        return not_attempted(name)
    hint = ("one token's channels are consecutive in memory: give the last axis two axes (heads, head_dim) "
            "without copying, then move the heads axis in front of the sequence axis")
    g = torch.Generator().manual_seed(2)
    for shape, heads in (((2, 5, 12), 3), ((1, 7, 16), 4), ((3, 2, 8), 8)):
        x = torch.randn(*shape, generator=g)
        result = _run(fn, x, heads)
        if not _same(result, _split_heads_reference(x, heads)):
            return _wrong_because(name, hint, f"wrong result for shape {shape} with {heads} heads")
        if result.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            return _wrong_because(name, hint, "the values are right but the result is a copy (its storage is "
                                              "not x's): something in it copied the data")
    return verdict(name, fn, True, hint, success="correct, and checked: the result shares x's storage, no data copied")


# -- indexing --------------------------------------------------------------------------------------

def _target_rank_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    batch, seq, _ = logits.shape
    ranks = torch.empty(batch, seq, dtype=torch.long)
    for b in range(batch):
        for t in range(seq):
            ranks[b, t] = sum(1 for v in logits[b, t].tolist() if v > logits[b, t, targets[b, t]].item())
    return ranks


def check_target_rank(fn) -> Result:
    """Write fn(logits, targets): logits (batch, seq, vocab), targets (batch, seq) token ids ->
    (batch, seq) with, at each position, how many vocabulary entries score strictly higher than the
    target (0: the model's first choice was right), without a Python loop."""
    name = "chapter 2: the rank of each target"
    if fn is None:
        return not_attempted(name)
    hint = ("first pick each position's target logit, keeping a size-1 last axis (indexing with tensors, "
            "or gather along the vocabulary axis); then compare it with every logit of its row and count")
    g = torch.Generator().manual_seed(3)
    for batch, seq, vocab in ((2, 3, 10), (1, 7, 5), (4, 1, 50)):
        logits = torch.randn(batch, seq, vocab, generator=g, dtype=torch.float64)
        targets = torch.randint(0, vocab, (batch, seq), generator=g)
        if not _same(_run(fn, logits, targets), _target_rank_reference(logits, targets)):
            return _wrong_because(name, hint, f"wrong result for logits of shape {(batch, seq, vocab)}")
    return verdict(name, fn, True, hint, success="correct: rank < k for k = 1 and 5 gives top-1 and top-5 accuracy")


# -- broadcasting ----------------------------------------------------------------------------------

def _window_mask_reference(seq_len: int, window: int) -> torch.Tensor:
    return torch.tensor([[0 <= i - j < window for j in range(seq_len)] for i in range(seq_len)])


def check_sliding_window_mask(fn) -> Result:
    """Write fn(seq_len, window) -> a (seq_len, seq_len) bool tensor, True where query i may attend to
    key j: j is not in the future (j <= i) and at most window - 1 positions back, by broadcasting."""
    name = "chapter 2: a sliding-window causal mask"
    if fn is None:
        return not_attempted(name)
    hint = ("build the (seq_len, seq_len) table of offsets i - j by broadcasting a column of positions "
            "against a row of them; both conditions are comparisons on that table")
    for seq_len, window in ((5, 2), (7, 3), (4, 10), (6, 1)):
        result = _run(fn, seq_len, window)
        expected = _window_mask_reference(seq_len, window)
        if not isinstance(result, torch.Tensor) or result.dtype != torch.bool:
            return _wrong_because(name, hint, f"fn({seq_len}, {window}) should be a bool tensor")
        if result.shape != expected.shape or not torch.equal(result, expected):
            return _wrong_because(name, hint, f"wrong mask for seq_len={seq_len}, window={window}")
    return verdict(name, fn, True, hint,
                   success="correct: window >= seq_len gives the plain causal mask, window = 1 only the diagonal")


# -- autograd --------------------------------------------------------------------------------------

def check_second_derivative(answer) -> Result:
    """Use autograd twice: the second derivative of f(x) = x^3 * sin(x) at x = 2.0 (a float, within 1e-6)."""
    name = "chapter 2: a second derivative by autograd"
    if answer is None:
        return not_attempted(name)
    x = 2.0
    first = 3 * x**2 * math.sin(x) + x**3 * math.cos(x)  # the product rule, by hand
    expected = 6 * x * math.sin(x) + 6 * x**2 * math.cos(x) - x**3 * math.sin(x)  # and once more
    try:
        value = float(answer)
    except (TypeError, ValueError):
        value = None
    if value is not None and math.isclose(value, first, abs_tol=1e-6):
        return Result(name, "wrong", "that is the first derivative; differentiate it once more")
    return verdict(name, answer, value is not None and math.isclose(value, expected, rel_tol=0, abs_tol=1e-6),
                   hint="backward() leaves a plain number in .grad; ask autograd for the first derivative as a "
                        "tensor that keeps its own graph (look up create_graph in torch.autograd.grad), then "
                        "differentiate that tensor",
                   success=f"correct: {expected:.6f} = 6x sin x + 6x^2 cos x - x^3 sin x at x = 2")


# -- modules ---------------------------------------------------------------------------------------

def check_two_layer_module(cls) -> Result:
    """Write an nn.Module class TwoLayer(d_in, d_hidden, d_out): Linear(d_in, d_hidden) -> ReLU ->
    Linear(d_hidden, d_out). Its parameters must be registered (so optimizers see them)."""
    name = "chapter 2: a two-layer module"
    if cls is None:
        return not_attempted(name)
    hint = ("subclass torch.nn.Module, call super().__init__() first, and give each layer to an attribute of "
            "self (layers in a plain Python list are invisible to parameters()); forward applies them in order")
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
    if fn is None:
        return not_attempted(name)
    hint = ("build a new dict (the caller's must not change): move each value that is a tensor, and pass "
            "the others (counts, strings) through as they are")
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
