"""Chapter 6's exercises: the first BPE merge, counted by hand, and bits per byte."""

from __future__ import annotations

import math

from slmbook.exercises import Result, close, verdict


def first_merge(n_stories: int = 200) -> bytes:
    """The bytes of the first merge BPE learns on the first `n_stories` validation stories."""
    from slmbook.bpe import BPETokenizer
    from slmbook.data import load_stories

    tok = BPETokenizer.train(load_stories("validation", source="sample", verbose=False)[:n_stories], vocab_size=258)
    return tok.vocab[256]


def check_first_merge(answer) -> Result:
    """Which pair of bytes does BPE merge first on the first 200 validation stories? Answer with the
    merged text as a str (for example 'ab' or ' x'), found by counting pairs yourself."""
    expected = first_merge().decode("utf-8")
    return verdict("chapter 6: the first BPE merge", answer, answer == expected,
                   hint="split each story with slmbook.tokenizer.pretokenize(story), count "
                        "adjacent character pairs inside each piece with collections.Counter, take the most common; "
                        "mind the leading spaces",
                   success=f"correct! {expected!r} is the most frequent pair inside the pre-tokens")


# A model's loss on a text: 1,000 tokens, 1.5 nats per token on average, 4,000 UTF-8 bytes.
TOKENS, MEAN_NATS, BYTES = 1000, 1.5, 4000


def check_bits_per_byte(answer) -> Result:
    """Bits per byte of that model on that text (3 significant digits)."""
    expected = TOKENS * MEAN_NATS / (math.log(2) * BYTES)
    return verdict("chapter 6: bits per byte", answer, close(answer, expected, rel=1e-3),
                   hint="total nats = tokens * mean nats; bits = nats / ln 2; divide by the number of bytes",
                   success=f"correct! {expected:.4f} bits per byte")
