"""Chapters 1-3 exercise checkers: right answers (computed independently here) pass, wrong ones fail,
None is "not attempted"."""

import math

import torch

from slmbook.exercises import ch01, ch02, ch03


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
    assert ch01.check_neuron_gradient(None).status == "not attempted"


def test_ch01_adam_first_step():
    right = 1.0 - 0.01 * 250 / (250 + 1e-8)
    assert ch01.check_adam_first_step(right).correct
    assert ch01.check_adam_first_step(1.0 - 0.01 * 250).status == "wrong"  # plain SGD
    assert ch01.check_adam_first_step(1.0 - 0.01 * 0.1 * 250 / math.sqrt(0.001 * 250**2)).status == "wrong"  # no bias correction
    assert ch01.check_adam_first_step(None).status == "not attempted"


def test_ch02_bf16_gap():
    assert ch02.check_bf16_gap(2.0**-7).correct
    assert ch02.check_bf16_gap(2.0**-10).status == "wrong"  # float16's gap
    assert ch02.check_bf16_gap(2.0**-23).status == "wrong"  # float32's gap
    assert ch02.check_bf16_gap(None).status == "not attempted"


def test_ch02_split_heads():
    def right(x, n_heads):
        b, t, d = x.shape
        return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)

    def wrong_layout(x, n_heads):  # a reshape that mixes tokens into heads
        b, t, d = x.shape
        return x.reshape(b, n_heads, t, d // n_heads)

    def crashes(x, n_heads):
        raise RuntimeError("oops")

    assert ch02.check_split_heads(right).correct
    assert ch02.check_split_heads(wrong_layout).status == "wrong"
    assert ch02.check_split_heads(crashes).status == "wrong"
    assert ch02.check_split_heads(None).status == "not attempted"


def test_ch02_pick_targets():
    assert ch02.check_pick_targets(lambda logits, t: logits[torch.arange(len(t)), t]).correct
    assert ch02.check_pick_targets(lambda logits, t: logits.gather(1, t[:, None]).squeeze(1)).correct
    assert ch02.check_pick_targets(lambda logits, t: logits[:, t]).status == "wrong"  # (N, N), not (N,)
    assert ch02.check_pick_targets(lambda logits, t: logits.max(dim=1).values).status == "wrong"


def test_ch02_pairwise_sq_distances():
    assert ch02.check_pairwise_sq_distances(lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)).correct
    assert ch02.check_pairwise_sq_distances(lambda a, b: (a[:, None] - b[None]).abs().sum(-1)).status == "wrong"
    assert ch02.check_pairwise_sq_distances(lambda a, b: ((a - b) ** 2).sum(-1)).status == "wrong"


def test_ch02_derivative():
    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (x**3 * torch.sin(x)).backward()
    assert ch02.check_derivative(x.grad.item()).correct
    assert ch02.check_derivative(3 * 4 * math.cos(2.0)).status == "wrong"
    assert ch02.check_derivative(None).status == "not attempted"


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
    assert ch02.check_two_layer_module(None).status == "not attempted"


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


def test_ch03():
    # Qwen3-0.6B: 28 layers, 8 kv heads of 128; bfloat16 = 2 bytes
    assert ch03.check_kv_cache_bytes(2 * 28 * 8 * 128 * 32768 * 2).correct
    assert ch03.check_kv_cache_bytes(28 * 8 * 128 * 32768 * 2).status == "wrong"  # keys only
    assert ch03.check_kv_cache_bytes(2 * 28 * 16 * 128 * 32768 * 2).status == "wrong"  # query heads
    assert ch03.check_kv_cache_bytes(None).status == "not attempted"
    # BOOK by hand: embedding + 8 layers of (q, k, v, o, q/k norms, 2 norms, SwiGLU) + final norm
    per_layer = 512 * 512 * 2 + 512 * 256 * 2 + 2 * 64 + 2 * 512 + 3 * 512 * 1536
    n = 50257 * 512 + 8 * per_layer + 512
    assert ch03.check_adamw_static_bytes(16 * n).correct
    assert ch03.check_adamw_static_bytes(12 * n).status == "wrong"  # forgot the gradients
    assert ch03.check_adamw_static_bytes(16 * (n + 50257 * 512)).status == "wrong"  # counted the tied head twice
    matmul_weights = 8 * (512 * 512 * 2 + 512 * 256 * 2 + 3 * 512 * 1536) + 50257 * 512
    flops = 3 * (2 * matmul_weights + 4 * 8 * 8 * 64 * 512)
    assert ch03.check_training_flops(flops).correct
    assert ch03.check_training_flops(6 * n).status == "wrong"  # 6N leaves out the attention scores
    assert ch03.check_training_flops(flops // 3).status == "wrong"  # forward only
