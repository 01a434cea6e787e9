"""A neural network with its forward and backward passes written out by hand (chapter 1).

Nothing here uses autograd: every gradient is the chain rule applied by the code you can read, so
the tests (and chapter 1) can check it against `torch.autograd`, against `torch.nn` modules with the
same weights, and against finite differences with `torch.autograd.gradcheck` in float64.

The pieces:
- activations with their derivatives (`ACTIVATIONS`, `activation(name)`),
- losses with their gradients (`mse_loss`, `cross_entropy`, `LOSSES`),
- one `Neuron`, then the layers of a multilayer perceptron (`Linear`, `Act`, `LayerNorm`) and the
  `MLP` that chains them,
- weight initialisation schemes (`init_weight`), per-layer gradient norms and a small `train` loop,
  which chapter 1 uses to show vanishing and exploding gradients and how init and norms fix them,
- mini-batches (`minibatches`, `minibatch_gradient_error`): what makes gradient descent *stochastic*,
  and how noisy a batch's gradient is; `train` takes a batch size and a learning-rate schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from slmbook.config import positive_int

# ----------------------------------------------------------------------------------------------
# Activations and their derivatives
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """A nonlinearity `fn` and its derivative `grad`, both taking the pre-activation z."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)


def _sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _sigmoid_grad(z):
    s = _sigmoid(z)
    return s * (1.0 - s)  # at most 1/4: one reason deep sigmoid nets lose their gradient


def _tanh_grad(z):
    t = torch.tanh(z)
    return 1.0 - t * t


def _relu(z):
    return torch.where(z > 0, z, torch.zeros_like(z))


def _relu_grad(z):
    return (z > 0).to(z.dtype)  # the derivative at exactly 0 is taken as 0, as torch does


LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope


def _leaky_relu(z):
    return torch.where(z > 0, z, LEAKY_SLOPE * z)


def _leaky_relu_grad(z):
    return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, LEAKY_SLOPE))


def _gelu(z):
    """Exact GELU: z * Phi(z), with Phi the standard normal CDF (torch's default, approximate='none')."""
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _gelu_grad(z):
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


def _silu(z):
    """SiLU (swish): z * sigmoid(z); the gate inside the SwiGLU feed-forward of chapter 10."""
    return z * _sigmoid(z)


def _silu_grad(z):
    s = _sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", lambda z: z, torch.ones_like),
    "sigmoid": Activation("sigmoid", _sigmoid, _sigmoid_grad),
    "tanh": Activation("tanh", torch.tanh, _tanh_grad),
    "relu": Activation("relu", _relu, _relu_grad),
    "leaky_relu": Activation("leaky_relu", _leaky_relu, _leaky_relu_grad),
    "gelu": Activation("gelu", _gelu, _gelu_grad),
    "silu": Activation("silu", _silu, _silu_grad),
}

# The torch.nn module computing the same function, so a test can compare against the real thing.
TORCH_ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "identity": torch.nn.Identity,
    "sigmoid": torch.nn.Sigmoid,
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(LEAKY_SLOPE),
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
}


def activation(name: str | Activation) -> Activation:
    """The activation called `name` (one of `ACTIVATIONS`)."""
    if isinstance(name, Activation):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is unknown; allowed: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------------
# Losses and their gradients with respect to the prediction
# ----------------------------------------------------------------------------------------------


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal prediction shape {tuple(pred.shape)}"
        )


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, averaged over every element (torch's reduction='mean')."""
    _check_same_shape(pred, target)
    return ((pred - target) ** 2).mean()


def mse_loss_grad(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d(mse)/d(pred) = 2 (pred - target) / N, N the number of elements averaged over."""
    _check_same_shape(pred, target)
    return 2.0 * (pred - target) / pred.numel()


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dimension, shifted by the row maximum so exp never overflows."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_softmax(logits))


def _check_classes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1] or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"targets must be integer class indices of shape ({logits.shape[0]},), got "
            f"shape {tuple(targets.shape)} and dtype {targets.dtype}"
        )
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"targets must lie in [0, {logits.shape[1] - 1}], got {targets.tolist()}")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability of the correct class: -mean_i log softmax(logits_i)[y_i]."""
    _check_classes(logits, targets)
    return -log_softmax(logits)[torch.arange(len(targets)), targets.long()].mean()


def cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d(cross_entropy)/d(logits) = (softmax(logits) - one_hot(targets)) / batch: predicted minus true."""
    _check_classes(logits, targets)
    grad = softmax(logits)
    grad[torch.arange(len(targets)), targets.long()] -= 1.0
    return grad / len(targets)


LOSSES = {
    "mse": (mse_loss, mse_loss_grad),
    "cross_entropy": (cross_entropy, cross_entropy_grad),
}


def loss_fn(name: str):
    """(loss, gradient) functions for `name`, one of `LOSSES`."""
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is unknown; allowed: {sorted(LOSSES)}")
    return LOSSES[name]


# ----------------------------------------------------------------------------------------------
# Weight initialisation
# ----------------------------------------------------------------------------------------------

INITS = ("xavier", "kaiming", "pytorch", "normal")


def init_weight(fan_in: int, fan_out: int, scheme: str = "xavier", std: float | None = None,
                generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """A (fan_out, fan_in) weight matrix drawn so signals keep (or, on purpose, lose) their scale.

    - "xavier": normal, std = sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio 2010), for tanh/sigmoid;
    - "kaiming": normal, std = sqrt(2 / fan_in) (He et al. 2015), for ReLU, which zeroes half its input;
    - "pytorch": uniform in +-1/sqrt(fan_in), what `torch.nn.Linear` does by default;
    - "normal": normal with the `std` you give (too small: signals vanish; too large: they explode).
    """
    positive_int("fan_in", fan_in)
    positive_int("fan_out", fan_out)
    if scheme not in INITS:
        raise ValueError(f"scheme={scheme!r} is unknown; allowed: {INITS}")
    if (scheme == "normal") != (std is not None):
        raise ValueError(f"std={std!r} with scheme={scheme!r}: give std exactly when scheme='normal'")
    if std is not None and not std > 0:
        raise ValueError(f"std={std!r}: must be > 0")
    weight = torch.empty(fan_out, fan_in, dtype=dtype)
    if scheme == "pytorch":
        bound = 1.0 / math.sqrt(fan_in)
        return weight.uniform_(-bound, bound, generator=generator)
    if scheme == "xavier":
        std = math.sqrt(2.0 / (fan_in + fan_out))
    elif scheme == "kaiming":
        std = math.sqrt(2.0 / fan_in)
    return weight.normal_(0.0, std, generator=generator)


# ----------------------------------------------------------------------------------------------
# One neuron
# ----------------------------------------------------------------------------------------------


class Neuron:
    """y = activation(x . w + b): a weighted sum of the inputs, a bias, and a nonlinearity."""

    def __init__(self, weight: torch.Tensor, bias: float | torch.Tensor, act: str = "sigmoid"):
        if weight.dim() != 1:
            raise ValueError(f"weight must be a vector (n_inputs,), got shape {tuple(weight.shape)}")
        self.weight = weight.clone()
        self.bias = torch.as_tensor(bias, dtype=weight.dtype).clone()
        self.act = activation(act)
        self.grad_weight = torch.zeros_like(self.weight)
        self.grad_bias = torch.zeros_like(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, n_inputs) -> (batch,). Remembers x and z for the backward pass."""
        if x.dim() != 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"x must be (batch, {self.weight.shape[0]}), got shape {tuple(x.shape)}")
        self._x = x
        self._z = x @ self.weight + self.bias
        return self.act(self._z)

    __call__ = forward

    def backward(self, grad_y: torch.Tensor) -> torch.Tensor:
        """Given dL/dy, store dL/dw and dL/db and return dL/dx (the chain rule, three lines)."""
        grad_z = grad_y * self.act.grad(self._z)  # dL/dz = dL/dy * dy/dz
        self.grad_weight = self._x.T @ grad_z  # z = x.w + b  ->  dz/dw = x
        self.grad_bias = grad_z.sum()  # dz/db = 1, summed over the batch
        return grad_z[:, None] * self.weight[None, :]  # dz/dx = w


# ----------------------------------------------------------------------------------------------
# Layers of a multilayer perceptron, each with forward and backward
# ----------------------------------------------------------------------------------------------


class Linear:
    """y = x W^T + b, W of shape (out, in) as in `torch.nn.Linear`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        if weight.dim() != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(
                f"weight must be (out, in) and bias (out,), got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.weight, self.bias = weight, bias
        self.grad_weight = torch.zeros_like(weight)
        self.grad_bias = torch.zeros_like(bias)

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]

    def gradients(self) -> list[torch.Tensor]:
        return [self.grad_weight, self.grad_bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._x = x
        return x @ self.weight.T + self.bias

    def backward(self, grad_y: torch.Tensor) -> torch.Tensor:
        self.grad_weight = grad_y.T @ self._x  # (out, batch) @ (batch, in)
        self.grad_bias = grad_y.sum(dim=0)
        return grad_y @ self.weight  # (batch, out) @ (out, in)


class Act:
    """An activation as a layer: elementwise, so its backward is a product with its derivative."""

    def __init__(self, name: str):
        self.act = activation(name)

    def parameters(self) -> list[torch.Tensor]:
        return []

    def gradients(self) -> list[torch.Tensor]:
        return []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._z = z
        return self.act(z)

    def backward(self, grad_y: torch.Tensor) -> torch.Tensor:
        return grad_y * self.act.grad(self._z)


class LayerNorm:
    """Normalise each row to mean 0 and variance 1 (no learned scale/shift, eps as in torch).

    Whatever scale the weights give a layer's output, the next layer sees unit scale again: this is
    how normalisation keeps signals (and so gradients) from shrinking or growing with depth.
    """

    def __init__(self, size: int, eps: float = 1e-5):
        self.size, self.eps = size, eps

    def parameters(self) -> list[torch.Tensor]:
        return []

    def gradients(self) -> list[torch.Tensor]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as torch uses
        self._inv_std = 1.0 / torch.sqrt(var + self.eps)
        self._xhat = (x - mean) * self._inv_std
        return self._xhat

    def backward(self, grad_y: torch.Tensor) -> torch.Tensor:
        # xhat depends on x directly and through the mean and variance; the two correction terms
        # remove the parts of grad_y that only shift the mean or change the spread.
        g = grad_y
        return self._inv_std * (
            g - g.mean(dim=-1, keepdim=True) - self._xhat * (g * self._xhat).mean(dim=-1, keepdim=True)
        )


class MLP:
    """A multilayer perceptron: Linear -> [LayerNorm] -> activation, repeated; the last Linear is bare.

    `sizes` = [n_inputs, hidden..., n_outputs]. Parameters are plain tensors (no requires_grad);
    `backward(grad_output)` fills each Linear's `grad_weight` and `grad_bias` by the chain rule.
    """

    def __init__(self, sizes: list[int], act: str = "tanh", init: str = "xavier", std: float | None = None,
                 norm: bool = False, seed: int = 0, dtype=torch.float64):
        if len(sizes) < 2:
            raise ValueError(f"sizes={sizes!r}: need at least [n_inputs, n_outputs]")
        self.sizes = list(sizes)
        activation(act)  # validate early
        generator = torch.Generator().manual_seed(seed)
        self.layers: list = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            weight = init_weight(fan_in, fan_out, init, std, generator, dtype)
            self.layers.append(Linear(weight, torch.zeros(fan_out, dtype=dtype)))
            if i < len(sizes) - 2:
                if norm:
                    self.layers.append(LayerNorm(fan_out))
                self.layers.append(Act(act))

    @property
    def linears(self) -> list[Linear]:
        return [layer for layer in self.layers if isinstance(layer, Linear)]

    def parameters(self) -> list[torch.Tensor]:
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self) -> list[torch.Tensor]:
        return [g for layer in self.layers for g in layer.gradients()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must be (batch, {self.sizes[0]}), got shape {tuple(x.shape)}")
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        """Walk the layers in reverse, each turning dL/d(its output) into dL/d(its input)."""
        grad = grad_output
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def to_torch(self) -> torch.nn.Sequential:
        """The same network as `torch.nn` modules with copies of these weights: the reference."""
        modules = []
        for layer in self.layers:
            if isinstance(layer, Linear):
                linear = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0], dtype=layer.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(layer.weight)
                    linear.bias.copy_(layer.bias)
                modules.append(linear)
            elif isinstance(layer, LayerNorm):
                modules.append(torch.nn.LayerNorm(layer.size, eps=layer.eps, elementwise_affine=False))
            else:
                modules.append(TORCH_ACTIVATIONS[layer.act.name]())
        return torch.nn.Sequential(*modules)


# ----------------------------------------------------------------------------------------------
# Checking a hand-written backward, and watching gradients by depth
# ----------------------------------------------------------------------------------------------


class HandWrittenBackward(torch.autograd.Function):
    """Expose an MLP's hand-written backward to autograd, so `torch.autograd.gradcheck` can test it
    against finite differences. Inputs: x and every parameter; output: the MLP's output."""

    @staticmethod
    def forward(ctx, mlp: MLP, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        originals = mlp.parameters()
        _set_parameters(mlp, [p.detach() for p in params])
        out = mlp.forward(x.detach())
        ctx.mlp, ctx.originals = mlp, originals
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = ctx.mlp.backward(grad_out)
        grads = ctx.mlp.gradients()
        _set_parameters(ctx.mlp, ctx.originals)
        return (None, grad_x, *grads)


def _set_parameters(mlp: MLP, params: list[torch.Tensor]) -> None:
    it = iter(params)
    for linear in mlp.linears:
        linear.weight, linear.bias = next(it), next(it)


def gradients_by_autograd(mlp: MLP, x: torch.Tensor, target: torch.Tensor, loss: str = "mse"):
    """(loss, [grads of every parameter]) computed by `torch.autograd` on `mlp.to_torch()`."""
    reference = mlp.to_torch()
    out = reference(x)
    if loss == "mse":
        value = torch.nn.functional.mse_loss(out, target)
    elif loss == "cross_entropy":
        value = torch.nn.functional.cross_entropy(out, target)
    else:
        raise ValueError(f"loss={loss!r} is unknown; allowed: {sorted(LOSSES)}")
    grads = torch.autograd.grad(value, list(reference.parameters()))
    return value.detach(), list(grads)


def loss_and_gradients(mlp: MLP, x: torch.Tensor, target: torch.Tensor, loss: str = "mse"):
    """(loss, [grads of every parameter]) by the hand-written forward and backward passes."""
    compute, grad_fn = loss_fn(loss)
    out = mlp.forward(x)
    value = compute(out, target)
    mlp.backward(grad_fn(out, target))
    return value, mlp.gradients()


def weight_gradient_norms(mlp: MLP) -> list[float]:
    """The L2 norm of dL/dW for each Linear layer, first layer first (call after `backward`)."""
    return [float(linear.grad_weight.norm()) for linear in mlp.linears]


def activation_stds(mlp: MLP, x: torch.Tensor) -> list[float]:
    """Standard deviation of each hidden layer's output (after its activation) for inputs x."""
    stds = []
    for layer in mlp.layers:
        x = layer.forward(x)
        if isinstance(layer, Act):
            stds.append(float(x.std()))
    return stds


def minibatches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Endless mini-batches of indices into n examples: each epoch a fresh random order of range(n),
    cut into n // batch_size batches of batch_size (the remainder is dropped, as with
    `DataLoader(drop_last=True)`), so every step averages the same number of examples and no example
    is seen twice before all the others have been seen once."""
    positive_int("n", n)
    positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size}: must be <= the number of examples, {n}")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def minibatch_gradient_error(mlp: MLP, x: torch.Tensor, target: torch.Tensor, batch_size: int,
                             samples: int = 100, loss: str = "mse", seed: int = 0) -> float:
    """How far a mini-batch's gradient is from the full-batch gradient g: the mean, over `samples`
    batches of `batch_size` distinct random examples, of |g_B - g|^2 / |g|^2 (every parameter flattened
    into one vector).

    g_B is an unbiased estimate of g; sampling theory says this error is (N - B) / (B (N - 1)) times
    its value at B = 1: it falls like 1/B and reaches 0 at B = N. That noise is the "stochastic" in SGD.
    """
    positive_int("batch_size", batch_size)
    positive_int("samples", samples)
    n = len(x)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size}: must be <= the number of examples, {n}")
    full = torch.cat([g.flatten() for g in loss_and_gradients(mlp, x, target, loss)[1]])
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for _ in range(samples):
        idx = torch.randperm(n, generator=generator)[:batch_size]
        batch = torch.cat([g.flatten() for g in loss_and_gradients(mlp, x[idx], target[idx], loss)[1]])
        errors.append(float((batch - full).pow(2).sum() / full.pow(2).sum()))
    return sum(errors) / samples


def train(mlp: MLP, x: torch.Tensor, target: torch.Tensor, optimizer, steps: int, loss: str = "mse",
          x_val: torch.Tensor | None = None, target_val: torch.Tensor | None = None,
          batch_size: int | None = None, lr_schedule: Callable[[int], float] | None = None,
          seed: int = 0) -> dict:
    """Training with hand-written gradients and an optimizer from `slmbook.optimizers`.

    batch_size=None: full-batch gradient descent (every step sees all of x). An integer: stochastic
    gradient descent, each step on the next mini-batch of `minibatches` (shuffled with `seed`).
    lr_schedule(step) -> learning rate, set on the optimizer before each step (None: keep its lr).

    Returns the history: the loss each step's gradient came from, the loss on all of x (`full_loss`,
    the same as `loss` in full-batch mode), validation loss per step (if validation data is given),
    the learning rate used, and the per-layer weight-gradient norms per step (first layer first).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a positive integer")
    compute = loss_fn(loss)[0]
    batches = None if batch_size is None else minibatches(len(x), batch_size, torch.Generator().manual_seed(seed))
    history = {"loss": [], "full_loss": [], "val_loss": [], "lr": [], "grad_norms": []}
    for step in range(steps):
        if batches is None:
            value, grads = loss_and_gradients(mlp, x, target, loss)
            history["full_loss"].append(float(value))
        else:
            history["full_loss"].append(float(compute(mlp.forward(x), target)))
            idx = next(batches)
            value, grads = loss_and_gradients(mlp, x[idx], target[idx], loss)
        history["loss"].append(float(value))
        history["grad_norms"].append(weight_gradient_norms(mlp))
        if x_val is not None:
            history["val_loss"].append(float(compute(mlp.forward(x_val), target_val)))
        if lr_schedule is not None:
            lr = lr_schedule(step)
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 <= lr < math.inf:
                raise ValueError(f"lr_schedule({step}) = {lr!r}: must be a finite number >= 0")
            optimizer.lr = float(lr)
        history["lr"].append(optimizer.lr)
        optimizer.step(grads)
    return history
