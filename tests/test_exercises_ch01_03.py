"""Chapters 1-3 exercise checkers: right answers (computed independently here) pass, wrong ones fail,
None is "not attempted" with no hint yet, and no answer of chapters 0-2 is on screen in the stored notebook."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from slmbook.exercises import ch00, ch01, ch02, ch03

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _not_attempted_without_hint(result):
    return result.status == "not attempted" and "Hint" not in result.message


def test_ch01_neuron_gradient():
    # by hand: z = 0.5*1 - 1*2 + 0.1 = -1.4, y = sigmoid(z), dL/dz = 2 (y - 1) y (1 - y)
    y = 1 / (1 + math.exp(1.4))
    dz = 2 * (y - 1) * y * (1 - y)
    right = [dz * 1.0, dz * 2.0, dz]
    assert ch01.check_neuron_gradient(right).correct
    assert ch01.check_neuron_gradient(torch.tensor(right)).correct
    assert ch01.check_neuron_gradient([dz, dz, dz]).status == "wrong"  # forgot dz/dw = x
    assert ch01.check_neuron_gradient([2 * (y - 1), 4 * (y - 1), 2 * (y - 1)]).status == "wrong"  # no sigmoid'
    assert ch01.check_neuron_gradient(right[:2]).status == "wrong"
    assert ch01.check_neuron_gradient("gradient").status == "wrong"
    assert "Hint" in ch01.check_neuron_gradient([0.0, 0.0, 0.0]).message
    assert _not_attempted_without_hint(ch01.check_neuron_gradient(None))


def _adam_by_hand(grads, lr=0.01, betas=(0.9, 0.999), eps=1e-8, bias_correction=True):
    p, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = (m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)) if bias_correction else (m, v)
        p -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


def test_ch01_adam_two_steps():
    right = _adam_by_hand([250.0, -50.0])
    assert ch01.check_adam_two_steps(right).correct
    assert ch01.check_adam_two_steps(torch.tensor(right)).correct
    one_step = ch01.check_adam_two_steps(_adam_by_hand([250.0]))
    assert one_step.status == "wrong" and "first step" in one_step.message
    assert ch01.check_adam_two_steps(1.0 - 0.01 * (250 - 50)).status == "wrong"  # plain gradient descent
    assert ch01.check_adam_two_steps(_adam_by_hand([250.0, -50.0], bias_correction=False)).status == "wrong"
    assert ch01.check_adam_two_steps(_adam_by_hand([250.0, 50.0])).status == "wrong"  # lost the sign
    assert _not_attempted_without_hint(ch01.check_adam_two_steps(None))


def test_ch02_bf16_first_lost_integer():
    mantissa_bits = round(-math.log2(torch.finfo(torch.bfloat16).eps))  # 7 stored bits after the leading 1
    right = 2 ** (mantissa_bits + 1) + 1
    assert right == 257 and ch02.check_bf16_first_lost_integer(right).correct
    assert ch02.check_bf16_first_lost_integer(2049).status == "wrong"  # float16's
    assert ch02.check_bf16_first_lost_integer(256).status == "wrong"  # a power of two
    assert ch02.check_bf16_first_lost_integer(258).status == "wrong"
    assert ch02.check_bf16_first_lost_integer(257.0).status == "wrong"  # the question asks for an int
    assert _not_attempted_without_hint(ch02.check_bf16_first_lost_integer(None))


def test_ch02_split_heads():
    def right(x, n_heads):
        b, t, d = x.shape
        return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)

    def copied(x, n_heads):  # the right values, but a copy
        return right(x, n_heads).contiguous()

    def wrong_layout(x, n_heads):  # a reshape that mixes tokens into heads
        b, t, d = x.shape
        return x.reshape(b, n_heads, t, d // n_heads)

    def crashes(x, n_heads):
        raise RuntimeError("oops")

    assert ch02.check_split_heads(right).correct
    result = ch02.check_split_heads(copied)
    assert result.status == "wrong" and "copy" in result.message
    assert ch02.check_split_heads(wrong_layout).status == "wrong"
    assert ch02.check_split_heads(crashes).status == "wrong"
    assert _not_attempted_without_hint(ch02.check_split_heads(None))


def test_ch02_target_rank():
    def by_gather(logits, targets):
        return (logits > logits.gather(-1, targets[..., None])).sum(dim=-1)

    def by_indexing(logits, targets):
        b, t, _ = logits.shape
        picked = logits[torch.arange(b)[:, None], torch.arange(t)[None, :], targets]
        return (logits > picked[..., None]).sum(dim=-1)

    assert ch02.check_target_rank(by_gather).correct
    assert ch02.check_target_rank(by_indexing).correct
    counts_itself = ch02.check_target_rank(lambda logits, t: (logits >= logits.gather(-1, t[..., None])).sum(-1))
    assert counts_itself.status == "wrong"
    assert ch02.check_target_rank(lambda logits, t: logits.argmax(dim=-1)).status == "wrong"
    assert ch02.check_target_rank(lambda logits, t: (logits > logits.gather(-1, t[..., None])).sum(-1).flatten()).status == "wrong"
    assert _not_attempted_without_hint(ch02.check_target_rank(None))


def test_ch02_sliding_window_mask():
    def right(seq_len, window):
        offset = torch.arange(seq_len)[:, None] - torch.arange(seq_len)[None, :]
        return (offset >= 0) & (offset < window)

    def by_triangles(seq_len, window):  # the same mask from two triangles, no broadcasting
        ones = torch.ones(seq_len, seq_len, dtype=torch.bool)
        return ones.tril() & ~ones.tril(-window)

    assert ch02.check_sliding_window_mask(right).correct
    assert ch02.check_sliding_window_mask(by_triangles).correct
    assert ch02.check_sliding_window_mask(lambda n, w: torch.ones(n, n, dtype=torch.bool).tril()).status == "wrong"
    assert ch02.check_sliding_window_mask(lambda n, w: right(n, w + 1)).status == "wrong"  # one too many
    assert ch02.check_sliding_window_mask(lambda n, w: right(n, w).long()).status == "wrong"  # not bool
    assert _not_attempted_without_hint(ch02.check_sliding_window_mask(None))


def test_ch02_second_derivative():
    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(x**3 * torch.sin(x), x, create_graph=True)
    (second,) = torch.autograd.grad(first, x)
    assert ch02.check_second_derivative(second.item()).correct
    result = ch02.check_second_derivative(first.item())
    assert result.status == "wrong" and "first derivative" in result.message
    assert ch02.check_second_derivative(-second.item()).status == "wrong"
    assert ch02.check_second_derivative("two").status == "wrong"
    assert _not_attempted_without_hint(ch02.check_second_derivative(None))


def test_ch02_two_layer_module():
    class Right(torch.nn.Module):
        def __init__(self, d_in, d_hidden, d_out):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(d_in, d_hidden), torch.nn.Linear(d_hidden, d_out)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class Unregistered(torch.nn.Module):  # layers in a plain list: the optimizer never sees them
        def __init__(self, d_in, d_hidden, d_out):
            super().__init__()
            self.layers = [torch.nn.Linear(d_in, d_hidden), torch.nn.Linear(d_hidden, d_out)]

        def forward(self, x):
            return self.layers[1](torch.relu(self.layers[0](x)))

    class NoReLU(Right):
        def forward(self, x):
            return self.fc2(self.fc1(x))

    assert ch02.check_two_layer_module(Right).correct
    assert ch02.check_two_layer_module(lambda a, b, c: torch.nn.Sequential(
        torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Linear(b, c))).correct
    assert ch02.check_two_layer_module(Unregistered).status == "wrong"
    assert ch02.check_two_layer_module(NoReLU).status == "wrong"
    assert _not_attempted_without_hint(ch02.check_two_layer_module(None))


def test_ch02_to_device():
    def right(batch, device):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def in_place(batch, device):  # moves, but also changes the caller's dict
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                batch[k] = v.to(device)
        return batch

    def forgets_non_tensors(batch, device):
        return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    assert ch02.check_to_device(right).correct
    assert ch02.check_to_device(in_place).status == "wrong"
    assert ch02.check_to_device(forgets_non_tensors).status == "wrong"
    assert ch02.check_to_device(lambda b, d: b).status == "wrong"
    assert _not_attempted_without_hint(ch02.check_to_device(None))


# -- no answer of chapters 0-2 is on screen -------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", re.IGNORECASE)


def _numbers_on_screen(notebook: str) -> list[float | int]:
    """Every number in a stored notebook's outputs and markdown: what a reader sees before answering."""
    cells = json.loads((NOTEBOOKS / notebook).read_text(encoding="utf-8"))["cells"]
    texts = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    for cell in cells:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            for mime in ("text/plain", "text/markdown"):
                texts.append("".join(output.get("data", {}).get(mime, "")))
    numbers = []
    for match in NUMBER.findall("\n".join(texts)):
        text = match.replace(",", "")
        try:
            numbers.append(int(text) if re.fullmatch(r"-?\d+", text) else float(text))
        except ValueError:
            continue
    return numbers


@pytest.mark.parametrize("notebook, checkers", [
    ("00_from_scratch.ipynb", [ch00.check_car_count]),
    ("01_neural_networks.ipynb", [ch01.check_adam_two_steps]),
    ("02_pytorch.ipynb", [ch02.check_bf16_first_lost_integer, ch02.check_second_derivative]),
], ids=["ch00", "ch01", "ch02"])
def test_no_numeric_answer_is_on_screen(notebook, checkers):
    numbers = _numbers_on_screen(notebook)
    assert len(numbers) > 20  # the parse found the notebook's numbers
    for check in checkers:
        passing = [n for n in numbers if check(n).correct]
        assert passing == [], f"{check.__name__} accepts {passing}, which {notebook} shows"


def test_no_neuron_gradient_is_on_screen():
    numbers = [float(n) for n in _numbers_on_screen("01_neural_networks.ipynb")]
    triples = [numbers[i:i + 3] for i in range(len(numbers) - 2)]
    assert not any(ch01.check_neuron_gradient(t).correct for t in triples)


def test_ch03():
    # Qwen3-0.6B: 28 layers, 8 kv heads of 128; bfloat16 = 2 bytes
    assert ch03.check_kv_cache_bytes(2 * 28 * 8 * 128 * 32768 * 2).correct
    assert ch03.check_kv_cache_bytes(28 * 8 * 128 * 32768 * 2).status == "wrong"  # keys only
    assert ch03.check_kv_cache_bytes(2 * 28 * 16 * 128 * 32768 * 2).status == "wrong"  # query heads
    # BOOK by hand: embedding + 8 layers of (q, k, v, o, q/k norms, 2 norms, SwiGLU) + final norm
    per_layer = 512 * 512 * 2 + 512 * 256 * 2 + 2 * 64 + 2 * 512 + 3 * 512 * 1536
    n = 50257 * 512 + 8 * per_layer + 512
    assert ch03.check_adamw_static_bytes(16 * n).correct
    assert ch03.check_adamw_static_bytes(12 * n).status == "wrong"  # forgot the gradients
    assert ch03.check_adamw_static_bytes(16 * (n + 50257 * 512)).status == "wrong"  # counted the tied head twice
    # attention scores 4 x 8 layers x 8 heads x 64 x T = 2 x weights in products (head included)
    matmul_weights = 8 * (512 * 512 * 2 + 512 * 256 * 2 + 3 * 512 * 1536) + 50257 * 512
    crossover = 2 * matmul_weights / (4 * 8 * 8 * 64)
    assert ch03.check_attention_crossover(crossover).correct
    assert ch03.check_attention_crossover(round(crossover)).correct
    assert ch03.check_attention_crossover(2 * (matmul_weights - 50257 * 512) / (4 * 8 * 8 * 64)).status == "wrong"  # no head
    assert ch03.check_attention_crossover(2 * crossover).status == "wrong"  # scores counted once, not twice
    assert ch03.check_attention_crossover("long").status == "wrong"
    for check in (ch03.check_kv_cache_bytes, ch03.check_adamw_static_bytes, ch03.check_attention_crossover):
        assert _not_attempted_without_hint(check(None))
    assert "Hint" in ch03.check_attention_crossover(512).message


def test_ch03_no_numeric_answer_is_on_screen():
    numbers = _numbers_on_screen("03_gpus.ipynb")
    assert len(numbers) > 20
    for check in (ch03.check_kv_cache_bytes, ch03.check_adamw_static_bytes, ch03.check_attention_crossover):
        passing = [x for x in numbers if check(x).correct]
        assert passing == [], f"{check.__name__} accepts {passing}, which 03_gpus.ipynb shows"
