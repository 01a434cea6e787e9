"""The output head fused with the loss (chapter 14): the tokens x vocabulary logits never exist in full.

They are the largest tensor of a training step: for a batch of 32 x 1,024 tokens and GPT-2's
50,257-token vocabulary, 1.6 G numbers (3.3 GB in bf16), written by the head, read by the softmax,
written again as their gradient and read twice more by the backward products. Here the tokens go
through the head a chunk at a time, and the gradients are computed while each chunk is fresh: per
chunk of rows

    logits = h @ W^T,  lse = logsumexp(logits),  loss += lse - logits[target]
    g = (softmax(logits) - one_hot(target)) / N       # dL/dlogits of the mean loss
    dL/dh = g @ W,  dL/dW += g^T @ h

so backward only scales the stored gradients. The step `g` from the logits is one pass over memory;
on a GPU it runs as a small Triton kernel (`softmax_gradient_triton`, 3.1 TB/s on an H100 counting
three passes, against 2.2 TB/s for what torch.compile makes of the same expression), elsewhere as
the torch expression (`softmax_gradient_torch`), which is the reference the kernel is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmbook.config import positive_int

try:  # ships with CUDA builds of PyTorch; optional elsewhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

PAD_VOCAB_TO = 64  # the vocabulary is padded to a multiple of this (see FusedLinearCrossEntropy.forward)
KERNELS = ("auto", "torch", "triton")


def softmax_gradient_torch(logits: torch.Tensor, targets: torch.Tensor, vocab: int, n: int):
    """(g, lse): g = (softmax - one_hot(targets)) / n in the logits' dtype, softmax taken in float32
    over the first `vocab` columns (the others are padding, g = 0 there); lse per row in float32.

    Written element-wise so that torch.compile makes it one kernel: a scatter of the one-hot in the
    middle would cost two more passes over the logits.
    """
    columns = torch.arange(logits.shape[1], device=logits.device)
    x = logits.float().masked_fill(columns >= vocab, float("-inf"))
    lse = torch.logsumexp(x, dim=-1)
    is_target = columns[None, :] == targets[:, None]
    g = ((torch.exp(x - lse[:, None]) - is_target.float()) / n).to(logits.dtype)
    return g, lse


if triton is not None:

    @triton.jit
    def _softmax_gradient_kernel(logits_ptr, g_ptr, lse_ptr, targets_ptr, row_stride, vocab, width, n,
                                 BLOCK: tl.constexpr):
        """One program per row: an online logsumexp over the row, then g written in a second pass.

        The second pass walks the row backwards, so it starts with the blocks the first pass read
        last, and the cache hints keep the first reads and drop the second reads and the writes:
        both give the L2 cache a chance to serve part of the second read (on an H100, 8,192 x 50,304
        bf16 logits took 871 us walking forwards without hints at 16 warps, 804 us like this at 8).
        """
        row = tl.program_id(0).to(tl.int64)
        logits_row = logits_ptr + row * row_stride
        # pass 1: running max and sum of exp, one per lane, merged at the end
        running_max = tl.full([BLOCK], float("-inf"), tl.float32)
        running_sum = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(logits_row + cols, mask=cols < vocab, other=float("-inf"),
                        eviction_policy="evict_last").to(tl.float32)
            new_max = tl.maximum(running_max, x)
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a lane that has seen no column yet
            running_sum = running_sum * tl.exp(running_max - shift) + tl.exp(x - shift)
            running_max = new_max
        row_max = tl.max(running_max, 0)
        lse = row_max + tl.log(tl.sum(running_sum * tl.exp(running_max - row_max), 0))
        tl.store(lse_ptr + row, lse)
        # pass 2, last block first: g = (exp(x - lse) - [column == target]) / n; padding columns load -inf, get 0
        target = tl.load(targets_ptr + row)
        g_row = g_ptr + row * row_stride
        blocks = tl.cdiv(width, BLOCK)
        for i in range(0, blocks):
            cols = (blocks - 1 - i) * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(logits_row + cols, mask=cols < vocab, other=float("-inf"),
                        eviction_policy="evict_first").to(tl.float32)
            g = (tl.exp(x - lse) - (cols == target).to(tl.float32)) / n
            tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=cols < width, eviction_policy="evict_first")


def softmax_gradient_triton(logits: torch.Tensor, targets: torch.Tensor, vocab: int, n: int, block: int = 4096):
    """`softmax_gradient_torch` as one Triton kernel: reads each row twice and writes g once."""
    if triton is None:
        raise RuntimeError("kernel='triton' needs the triton package (it comes with CUDA builds of PyTorch); "
                           "use kernel='torch'")
    logits, targets = logits.contiguous(), targets.contiguous()  # the kernel walks rows of unit stride
    rows, width = logits.shape
    g = torch.empty_like(logits)
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _softmax_gradient_kernel[(rows,)](logits, g, lse, targets, logits.stride(0), vocab, width, n, BLOCK=block,
                                      num_warps=8)
    return g, lse


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """'auto' -> 'triton' on a CUDA device when triton is installed, else 'torch'."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: allowed {KERNELS}")
    if kernel == "auto":
        return "triton" if device.type == "cuda" and triton is not None else "torch"
    return kernel


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of (hidden @ weight^T) against targets, a chunk of tokens at a time, with the
    gradients computed during the forward pass (see the module's docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, compute_dtype, kernel: str):
        n, vocab = hidden.shape[0], weight.shape[0]
        softmax_gradient = softmax_gradient_triton if kernel == "triton" else softmax_gradient_torch
        # The vocabulary is padded with zero rows to a multiple of PAD_VOCAB_TO: a row of 50,257
        # bf16 logits is not 16-byte aligned, and the GPU's fastest matmul kernels need that
        # (+5% tokens/s for the book's model on an H100). The padded columns are left out of the
        # softmax and their gradient rows dropped.
        padded = -(-vocab // PAD_VOCAB_TO) * PAD_VOCAB_TO
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are chosen explicitly
            h = hidden.to(compute_dtype)
            w = F.pad(weight.to(compute_dtype), (0, 0, 0, padded - vocab))
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros((padded, weight.shape[1]), dtype=torch.float32, device=weight.device)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, n, chunk):
                hc, yc = h[start : start + chunk], targets[start : start + chunk]
                logits = hc @ w.t()
                g, lse = softmax_gradient(logits, yc, vocab, n)
                total = total + (lse - logits.gather(1, yc[:, None]).squeeze(1).float()).sum()
                grad_h[start : start + chunk] = g @ w
                grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w[:vocab])
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h * grad_output).to(h_dtype), (grad_w * grad_output).to(w_dtype), None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk: int = 4096, kernel: str = "auto") -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, targets) (mean over tokens) without the full logits.

    hidden (tokens, dim), weight (vocab, dim), targets (tokens,). Under autocast the products run
    in the autocast dtype and the softmax in float32, as in the model's own loss. `kernel` picks
    how the softmax gradient is computed: 'auto' (Triton on a GPU), 'torch' or 'triton'.
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1] or weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets {tuple(targets.shape)}: "
                         "expected (tokens, dim), (vocab, dim) and (tokens,)")
    positive_int("chunk", chunk)
    kernel = resolve_kernel(kernel, hidden.device)
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk, compute, kernel)


class FusedLossModel(torch.nn.Module):
    """`model` whose training forward ends in `fused_linear_cross_entropy` instead of lm_head + the
    model's loss: forward(x, y) -> (None, loss). A module, so that DDP and torch.compile wrap it."""

    def __init__(self, model: torch.nn.Module, chunk: int, kernel: str = "auto"):
        super().__init__()
        resolve_kernel(kernel, torch.device("cpu"))  # a bad name fails here, not at the first step
        self.model, self.chunk, self.kernel = model, chunk, kernel

    def forward(self, x, y):
        hidden = self.model.forward_hidden(x)
        loss = fused_linear_cross_entropy(hidden.flatten(0, 1), self.model.lm_head.weight, y.flatten(),
                                          self.chunk, self.kernel)
        return None, loss
