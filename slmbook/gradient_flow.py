"""How much gradient reaches each layer: residual connections and norm placement (chapter 10).

A deep stack trains only if the loss's gradient reaches its first layers. Without residual
connections the gradient is multiplied by every layer's Jacobian on the way down and shrinks or
blows up; with them, each block adds to an identity path, so the gradient reaching layer 1 is at
least the gradient of the top. Where the norm sits matters too: post-norm (normalise after adding,
the original Transformer) divides the identity path at every layer, pre-norm (normalise the branch
input, GPT-2 onwards and Qwen) leaves it untouched.

`layer_gradient_norms` measures this on our own `QwenModel`, whose blocks switch between the
variants (`norm_position`, `residual`). A gradient at initialisation is a prediction; training is
the test: `FeedForwardStack` is a deep stack of the chapter's own RMSNorm + SwiGLU blocks, with or
without the residual `x +`, small enough that `train_stack` trains it on real text in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import trange

from slmbook.config import QwenConfig, positive_int
from slmbook.feedforward import SwiGLU
from slmbook.norms import make_norm
from slmbook.qwen import QwenModel


def layer_gradient_norms(model: QwenModel, input_ids: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """L2 norm of the loss gradient over all parameters of each block, bottom (layer 0) to top.

    One forward and backward pass of the language-model loss; the model's .grad fields are
    cleared before and after, so the call leaves no trace.
    """
    model.zero_grad(set_to_none=True)
    _, loss = model(input_ids, targets=targets)
    loss.backward()
    norms = []
    for layer in model.layers:
        squares = [p.grad.double().pow(2).sum() for p in layer.parameters() if p.grad is not None]
        norms.append(torch.stack(squares).sum().sqrt().item() if squares else 0.0)
    model.zero_grad(set_to_none=True)
    return norms


VARIANTS = {
    "pre-norm + residual (Qwen)": dict(norm_position="pre", residual=True),
    "post-norm + residual (2017 Transformer)": dict(norm_position="post", residual=True),
    "pre-norm, no residual": dict(norm_position="pre", residual=False),
    "post-norm, no residual": dict(norm_position="post", residual=False),
}


def compare_variants(config: QwenConfig, input_ids: torch.Tensor, targets: torch.Tensor, seed: int = 0,
                     std: float = 0.02, variants: dict | None = None) -> dict[str, list[float]]:
    """Per-layer gradient norms of the same-shaped model in each variant.

    Every variant starts from the same seed and the same plain Normal(0, std) init for all linear
    layers (GPT-2's smaller init of the residual projections assumes a residual stream, so it is
    left out to keep the comparison about the wiring alone).
    """
    results = {}
    for name, switches in (variants or VARIANTS).items():
        torch.manual_seed(seed)
        model = QwenModel(config, **switches)
        model.init_weights(std=std, residual_std=std)
        results[name] = layer_gradient_norms(model, input_ids, targets)
    return results


class FeedForwardStack(nn.Module):
    """Next-token prediction from the `context` tokens before it through `depth` blocks of
    norm + SwiGLU: `h = h + ffn(norm(h))` with `residual`, `h = ffn(norm(h))` without. `norm` is
    'rmsnorm' (Qwen's) or 'layernorm', to compare the two in training.

    No attention: the window's token embeddings are concatenated and projected to `width`, so all
    the depth is in the stack of blocks, and a 16-block model trains in seconds on a CPU. Both
    variants have exactly the same parameters; only the `h +` differs.
    """

    def __init__(self, vocab_size: int, context: int, depth: int, width: int, hidden_dim: int | None = None,
                 embed_dim: int = 16, residual: bool = True, norm: str = "rmsnorm"):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("depth", depth), ("width", width),
                            ("embed_dim", embed_dim)):
            positive_int(name, value)
        hidden_dim = positive_int("hidden_dim", hidden_dim) if hidden_dim is not None else 2 * width
        self.context, self.residual = context, bool(residual)
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim)
        self.in_proj = nn.Linear(context * embed_dim, width, bias=False)
        self.norms = nn.ModuleList(make_norm(norm, width) for _ in range(depth))
        self.blocks = nn.ModuleList(SwiGLU(width, hidden_dim) for _ in range(depth))
        self.norm = make_norm(norm, width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """Normal(0, std) for every matrix (the same rule for every variant), norm scales at 1 and
        LayerNorm's biases at 0."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=generator) * std)
                else:
                    p.fill_(0.0 if name.endswith("bias") else 1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(self.embed_tokens(input_ids).flatten(1))
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(norm(h)) if self.residual else block(norm(h))
        return self.lm_head(self.norm(h))


def _windows(tokens: torch.Tensor, context: int, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = tokens[starts[:, None] + torch.arange(context + 1)]
    return w[:, :-1], w[:, -1]


def _check_tokens(tokens, model: FeedForwardStack) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.dtype != torch.long:
        raise ValueError(f"tokens: expected a 1-D torch.long tensor of token ids, got "
                         f"{type(tokens).__name__} {getattr(tokens, 'shape', '')} {getattr(tokens, 'dtype', '')}")
    if tokens.numel() < model.context + 2:
        raise ValueError(f"tokens has {tokens.numel()} ids: need at least context + 2 = {model.context + 2}")
    vocab = model.lm_head.out_features
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"tokens: ids must be in [0, {vocab}) (the model's vocab_size), got "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


def block_gradient_norms(model: FeedForwardStack) -> list[float]:
    """L2 norm of the current .grad of each block's parameters (its norm and its SwiGLU), bottom first."""
    norms = []
    for norm, block in zip(model.norms, model.blocks, strict=True):
        grads = [p.grad.double().pow(2).sum() for p in (*norm.parameters(), *block.parameters()) if p.grad is not None]
        norms.append(torch.stack(grads).sum().sqrt().item() if grads else 0.0)
    return norms


def train_stack(model: FeedForwardStack, tokens: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 3e-3,
                seed: int = 0, progress: bool = False, threads: int | None = 1) -> dict:
    """Train `model` with AdamW (no weight decay) on `steps` batches of random windows of `tokens`.

    Returns {"loss": the loss of every step (each on a fresh batch, before its update),
    "gradient norms": `block_gradient_norms` averaged over all steps}. One step's norms are noise: at
    the last step of chapter 10's plain stack, the top block got 848x the bottom one's gradient on one
    CPU and 0.4x on another (different vector kernels). Averaged over the run, AVX2 kernels and plain
    ones (ATEN_CPU_CAPABILITY=default) agree: the strongest block gets about 67x the weakest one's
    gradient without residuals, 11-14x with them.
    The windows come from `seed`, so two models trained with the same seed see the same batches in
    the same order.
    threads: CPU threads for the run (restored afterwards; None keeps the current setting). Each
    product of so small a model is too short to split across threads: on the 2-core machine that
    stored chapter 10's outputs, shared with other jobs, a step of the 16-block stack took 36 ms on
    one thread and 834 ms on two, which wait for each other whenever one is descheduled.
    """
    _check_tokens(tokens, model)
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    if threads is not None:
        positive_int("threads", threads)
    if not lr > 0:
        raise ValueError(f"lr={lr!r}: must be > 0")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses, norm_sums = [], None
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for _ in trange(steps, disable=not progress, desc="residual" if model.residual else "no residual"):
            starts = torch.randint(0, tokens.numel() - model.context, (batch_size,), generator=generator)
            inputs, targets = _windows(tokens, model.context, starts)
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = block_gradient_norms(model)
            norm_sums = norms if norm_sums is None else [a + b for a, b in zip(norm_sums, norms, strict=True)]
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(before)
    optimizer.zero_grad(set_to_none=True)
    return {"loss": losses, "gradient norms": [total / steps for total in norm_sums]}


@torch.no_grad()
def stack_loss(model: FeedForwardStack, tokens: torch.Tensor, windows: int = 1024, seed: int = 0) -> float:
    """Mean next-token cross-entropy (nats) of `model` on `windows` random windows of `tokens`
    (e.g. held-out validation text), the same windows for every model given the same seed."""
    _check_tokens(tokens, model)
    positive_int("windows", windows)
    starts = torch.randint(0, tokens.numel() - model.context, (windows,), generator=torch.Generator().manual_seed(seed))
    inputs, targets = _windows(tokens, model.context, starts)
    model.eval()
    return F.cross_entropy(model(inputs), targets).item()
