"""Chapter 6's exercises: the first BPE merge counted by hand, bits per byte, and GPT-2's numbers."""

from __future__ import annotations

import functools
import math

from slmbook.exercises import Result, close, exact_int, not_attempted, verdict


@functools.lru_cache(maxsize=None)
def first_merge(n_stories: int = 200) -> tuple[bytes, int]:
    """The first merge BPE learns on the first `n_stories` validation stories: its bytes and how often
    its pair occurs inside the pre-tokens."""
    from slmbook.bpe import BPETokenizer
    from slmbook.data import load_stories

    tok = BPETokenizer.train(load_stories("validation", source="sample", verbose=False)[:n_stories], vocab_size=258)
    return tok.vocab[256], tok.merge_counts[0]


def check_first_merge_count(answer) -> Result:
    """How many times does the pair that BPE merges first occur inside the pre-tokens of the first 200
    validation stories? (The chapter's table shows the training stories' merges and counts, not these.)"""
    name = "chapter 6: the first BPE merge, counted"
    if answer is None:
        return not_attempted(name)
    pair, expected = first_merge()
    return verdict(name, answer, exact_int(answer, expected),
                   hint="split each story with slmbook.tokenizer.pretokenize(story), count adjacent byte pairs "
                        "inside each piece's UTF-8 bytes with collections.Counter (zip(b, b[1:])), and give the "
                        "largest count; mind that the pairs never cross two pieces",
                   success=f"correct! {pair.decode('utf-8')!r} occurs {expected:,} times, the most frequent pair")


# A model's loss on a text: 1,000 tokens, 1.5 nats per token on average, 4,000 UTF-8 bytes.
TOKENS, MEAN_NATS, BYTES = 1000, 1.5, 4000


def check_bits_per_byte(answer) -> Result:
    """Bits per byte of that model on that text (3 significant digits)."""
    if answer is None:
        return not_attempted("chapter 6: bits per byte")
    expected = TOKENS * MEAN_NATS / (math.log(2) * BYTES)
    return verdict("chapter 6: bits per byte", answer, close(answer, expected, rel=1e-3),
                   hint="total nats = tokens * mean nats; bits = nats / ln 2; divide by the number of bytes",
                   success=f"correct! {expected:.4f} bits per byte")


@functools.lru_cache(maxsize=1)
def single_token_numbers(limit: int = 10_000) -> int:
    """How many of the integers 0..limit-1, written in decimal without a space, are one GPT-2 token."""
    from slmbook.tokenizer import gpt2_encoding

    enc = gpt2_encoding()
    return sum(len(enc.encode_ordinary(str(n))) == 1 for n in range(limit))


def check_single_token_numbers(answer) -> Result:
    """How many of the integers 0 to 9,999 (written as str(n), no leading space) does GPT-2 encode as a
    single token? An int."""
    if answer is None:
        return not_attempted("chapter 6: numbers that are one GPT-2 token")
    expected = single_token_numbers()
    return verdict("chapter 6: numbers that are one GPT-2 token", answer, exact_int(answer, expected),
                   hint="loop over range(10_000) and count the n with len(gpt2.encode_ordinary(str(n))) == 1; "
                        "the numbers below 1,000 count too",
                   success=f"correct! {expected:,} of the 10,000: every 1- and 2-digit number, most 3-digit ones, "
                           "and a few 4-digit ones such as years")
