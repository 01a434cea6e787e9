"""Scoring a model on held-out text: loss, perplexity, bits per byte and the comparison table (chapters 12-14).

- `evaluation_batches` cuts a token stream into the non-overlapping windows that training's own
  evaluation scores (`slmbook.training.Trainer.evaluate`), so the numbers are comparable;
- `evaluate_nll` scores our models and transformers' alike (`logits_of`) in nats per token;
- `token_byte_lengths` gives each token's UTF-8 bytes, the denominator of bits per byte
  (`slmbook.metrics.bits_per_byte`), which, unlike perplexity, compares models with different tokenizers;
- `compare_variants` and `format_table` build and print one row per variant of a model: chapter 12's
  quantization table (`slmbook.quantization.compare_methods`).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from slmbook.config import positive_int
from slmbook.hardware import median_seconds
from slmbook.metrics import cross_entropy


def token_byte_lengths(encoding) -> torch.Tensor:
    """UTF-8 bytes of every token id, (n_vocab,) int64; special tokens (<|endoftext|>) count 0 bytes.

    Bits per byte divides the loss by the bytes of text the tokens spell; a story separator spells
    no text of the story.
    """
    special = set()
    if hasattr(encoding, "special_tokens_set"):
        special = {encoding.encode_single_token(t) for t in encoding.special_tokens_set}
    elif hasattr(encoding, "eot_token"):
        special = {encoding.eot_token}
    lengths = []
    for i in range(encoding.n_vocab):
        if i in special:
            lengths.append(0)
        elif hasattr(encoding, "decode_single_token_bytes"):
            try:
                lengths.append(len(encoding.decode_single_token_bytes(i)))
            except KeyError:  # an id with no token (gaps in a vocabulary)
                lengths.append(0)
        else:
            lengths.append(len(encoding.decode([i]).encode("utf-8")))
    return torch.tensor(lengths, dtype=torch.int64)


def evaluation_batches(tokens, context: int, batch_size: int, max_windows: int | None = None,
                       spread: bool = False) -> list[tuple]:
    """Held-out (input_ids, targets) batches: non-overlapping windows of a token stream, window
    i = tokens[i*context : i*context + context + 1], the windows the training engine
    (slmbook.training.Trainer.evaluate) scores, so perplexities are comparable with training's.

    `max_windows` keeps the first ones, or with `spread=True` that many spaced evenly over the whole
    stream: a sample of every part of the held-out text (all the validation stories, not the first few)."""
    tokens = torch.as_tensor(tokens).long().reshape(-1)
    for name, value in (("context", context), ("batch_size", batch_size)):
        positive_int(name, value)
    if max_windows is not None:
        positive_int("max_windows", max_windows)
    windows = (tokens.numel() - 1) // context
    if windows < 1:
        raise ValueError(f"tokens: {tokens.numel()} ids are too few for one window of context={context}")
    starts = torch.arange(windows)
    if max_windows is not None and max_windows < windows:
        starts = torch.linspace(0, windows - 1, max_windows).round().long() if spread else starts[:max_windows]
    offsets = starts[:, None] * context + torch.arange(context + 1)
    chunks = tokens[offsets]
    return [(c[:, :-1], c[:, 1:]) for c in chunks.split(batch_size)]


def logits_of(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The logits of `model` on `inputs`: our models return them, transformers' models return an
    output object that holds them (`.logits`), so both are scored by the same code."""
    out = model(inputs)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def evaluate_nll(model: nn.Module, batches) -> tuple[float, int, float]:
    """(mean negative log-likelihood in nats per token, tokens scored, seconds) of `model` (ours or
    a transformers causal LM) on `batches` of (input_ids, targets), with `slmbook.metrics.cross_entropy`."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    start = time.perf_counter()
    for inputs, targets in batches:
        logits = logits_of(model, inputs.to(device))
        total += cross_entropy(logits, targets.to(device), reduction="sum").item()
        count += targets.numel()
    if count == 0:
        raise ValueError("batches held no target tokens")
    return total / count, count, time.perf_counter() - start


@torch.no_grad()
def forward_seconds(model: nn.Module, inputs: torch.Tensor, repeats: int = 5) -> float:
    """Median wall-clock seconds of one forward pass of `model` on `inputs` (after one untimed pass):
    the speed column of the chapter's table, robust to one slow call."""
    positive_int("repeats", repeats)
    model.eval()
    device = next(model.parameters()).device
    inputs = inputs.to(device)
    return median_seconds(lambda: logits_of(model, inputs), device, repeats=repeats, warmup=1)


def compare_variants(model: nn.Module, batches, methods, build, sizes=None, evaluate=None,
                     repeats: int = 3) -> list[dict]:
    """The comparison table: one row per method, each a variant `build(model, method)` of `model`, with
    `sizes(variant)`'s columns (bits per weight and bytes, in chapter 12), perplexity on `batches`, its
    change against the "fp32" row (else the first), evaluation tokens per second, and the median time of
    one forward pass on the first batch (`repeats` timed passes; 0 skips the timing).

    `evaluate(model, batches) -> (mean_nll, tokens, seconds)` defaults to `evaluate_nll`; pass the
    training engine's evaluation to use exactly the code that reports validation loss in training.
    `slmbook.quantization.compare_methods` is this table over the quantization methods.
    """
    methods = list(methods)
    evaluate = evaluate or evaluate_nll
    batches = list(batches)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 0:
        raise ValueError(f"repeats={repeats!r}: must be an integer >= 0 (0: no timing)")
    rows = []
    for method in methods:
        variant = build(model, method)
        # sizes first: some bitsandbytes kernels repack their weights at the first forward pass
        row = {"method": method, **(sizes(variant) if sizes is not None else {})}
        nll, tokens, seconds = evaluate(variant, batches)
        row.update(perplexity=math.exp(nll), tokens_per_s=tokens / seconds if seconds > 0 else math.inf,
                   forward_seconds=forward_seconds(variant, batches[0][0], repeats) if repeats else math.nan)
        rows.append(row)
        del variant  # one variant in memory at a time: the next may be as large as the model
    base = next((r["perplexity"] for r in rows if r["method"] == "fp32"), rows[0]["perplexity"])
    for row in rows:
        row["perplexity_change"] = row["perplexity"] / base - 1
    return rows


def format_table(rows: list[dict], timings: bool = True, digits: int = 3) -> str:
    """The table as aligned text: perplexity with `digits` decimals, and (optional: they differ from
    run to run) the median time of one forward pass in ms."""
    if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 6:
        raise ValueError(f"digits={digits!r}: must be an integer 0..6")
    head = (f"{'method':28s} {'bits/weight':>11s} {'linear MB':>10s} {'model MB':>9s} {'perplexity':>10s} "
            f"{'vs fp32':>8s}")
    lines = [head + (f" {'forward':>10s}" if timings else "")]
    for r in rows:
        line = (f"{r['method']:28s} {r['bits_per_weight']:11.2f} {r['weight_bytes'] / 1e6:10.3f} "
                f"{r['model_bytes'] / 1e6:9.3f} {r['perplexity']:10.{digits}f} {100 * r['perplexity_change']:+7.2f}%")
        if timings:
            line += f" {1e3 * r['forward_seconds']:7.1f} ms"
        lines.append(line)
    return "\n".join(lines)
