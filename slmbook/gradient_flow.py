"""How much gradient reaches each layer: residual connections and norm placement (chapter 10).

A deep stack trains only if the loss's gradient reaches its first layers. Without residual
connections the gradient is multiplied by every layer's Jacobian on the way down and shrinks or
blows up; with them, each block adds to an identity path, so the gradient reaching layer 1 is at
least the gradient of the top. Where the norm sits matters too: post-norm (normalise after adding,
the original Transformer) divides the identity path at every layer, pre-norm (normalise the branch
input, GPT-2 onwards and Qwen) leaves it untouched.

`layer_gradient_norms` measures this on our own `QwenModel`, whose blocks switch between the
variants (`norm_position`, `residual`).
"""

from __future__ import annotations

import torch

from slmbook.config import QwenConfig
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
