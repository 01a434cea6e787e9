"""Chapter 14's exercises: what a data-parallel step processes, MFU, and the learning-rate schedule."""

from __future__ import annotations

from slmbook.config import BOOK
from slmbook.exercises import Result, exact_int, verdict


def _number(answer) -> bool:
    return isinstance(answer, (int, float)) and not isinstance(answer, bool)


def check_micro_batch(answer, batch_size: int = 64, grad_accum: int = 4, gpus: int = 2) -> Result:
    """batch_size=64 sequences per optimizer step, grad_accum=4, on 2 GPUs: how many sequences does one
    GPU put through the model in one forward pass?"""
    from slmbook.training import TrainConfig

    config = TrainConfig(batch_size=batch_size, grad_accum=grad_accum)
    expected = config.batch_size // (config.grad_accum * gpus)
    return verdict(
        "chapter 14: the micro-batch", answer, ok=exact_int(answer, expected),
        hint="batch_size counts every sequence of one optimizer step, over all GPUs and all micro-batches: "
             "split it across the GPUs, then across the accumulation steps",
        success=f"correct: {expected} sequences per forward pass; the optimizer still sees {batch_size}")


def check_mfu(answer, tokens_per_second: float = 1.0e6, seq_len: int = 512, peak_tflops: float = 989.0) -> Result:
    """The BOOK model trains at 1.0 M tokens/s with context 512 on a GPU whose bf16 peak is 989 TFLOP/s.
    What is its MFU (a fraction between 0 and 1)? Use slmbook.flops for the FLOPs per token."""
    from slmbook.flops import mfu

    expected = mfu(tokens_per_second, BOOK, seq_len, peak_tflops * 1e12)
    ok = _number(answer) and abs(answer - expected) <= 0.005
    return verdict(
        "chapter 14: model FLOPs utilisation", answer, ok=ok,
        hint="MFU = tokens/s x training FLOPs per token / peak FLOP/s, with "
             "slmbook.flops.training_flops_per_token(BOOK, 512) (forward + backward, attention and head included)",
        success=f"correct: {expected:.1%} of the peak")


def check_learning_rate(answer, step: int = 500) -> Result:
    """The 'book' preset (peak lr 1e-3, 50 warm-up steps, 1,000 steps, cosine to 10%): the learning rate at step 500?"""
    from slmbook.training import learning_rate, training_preset

    expected = learning_rate(step, training_preset("book"))
    ok = _number(answer) and abs(answer - expected) <= 1e-3 * expected
    return verdict(
        "chapter 14: the learning-rate schedule", answer, ok=ok,
        hint="after warm-up the rate is min + (max - min) * (1 + cos(pi * progress)) / 2, with progress = "
             "(step - warmup) / (steps - 1 - warmup), max = 1e-3 and min = 10% of it",
        success=f"correct: {expected:.3g}")
