"""Chapters 4-6 exercise checkers: right answers (computed independently here) pass, wrong ones fail."""

import collections
import math

import regex

from slmbook.data import load_stories
from slmbook.exercises import ch04, ch05, ch06
from slmbook.tokenizer import GPT2_PATTERN, gpt2_encoding


def book_parameters_by_hand() -> int:
    # BOOK: vocab 50257, dim 512, 8 layers, 8 heads of 64, 4 kv heads, hidden 1536, tied, qk-norm
    vocab, dim, layers, heads, kv, head_dim, hidden = 50257, 512, 8, 8, 4, 64, 1536
    per_layer = dim * heads * head_dim * 2 + dim * kv * head_dim * 2 + 2 * head_dim + 2 * dim + 3 * dim * hidden
    return vocab * dim + layers * per_layer + dim


def test_ch04():
    n = book_parameters_by_hand()
    assert ch04.check_book_tokens(20 * n).correct
    assert ch04.check_book_tokens(20 * n * 1.005).correct  # within 1%
    assert ch04.check_book_tokens(20 * (n - 50257 * 512)).status == "wrong"  # forgot the embedding
    assert ch04.check_book_tokens("many").status == "wrong"
    assert ch04.check_book_tokens(None).status == "not attempted"
    assert ch04.check_book_flops(6 * n * 20 * n).correct
    assert ch04.check_book_flops(2 * n * 20 * n).status == "wrong"  # forward only
    damaged = sum("â€" in s for s in load_stories("validation", source="sample", verbose=False))
    assert ch04.check_damaged_story_count(damaged).correct
    assert ch04.check_damaged_story_count(damaged + 1).status == "wrong"


def test_ch05():
    probs = (0.5, 0.25, 0.125, 0.5)
    assert ch05.check_perplexity(2 ** ((1 + 2 + 3 + 1) / 4)).correct
    assert ch05.check_perplexity(sum(1 / p for p in probs) / 4).status == "wrong"  # mean of 1/p is not it
    assert ch05.check_perplexity(None).status == "not attempted"
    enc = gpt2_encoding()
    named, lily = enc.encode_single_token(" named"), enc.encode_single_token(" Lily")
    counts = collections.Counter()
    for story in load_stories("validation", source="sample", verbose=False):
        ids = enc.encode_ordinary(story)
        counts.update(b for a, b in zip(ids, ids[1:]) if a == named)
    p = counts[lily] / sum(counts.values())
    assert 0 < p < 1
    assert ch05.check_named_lily(p).correct
    assert ch05.check_named_lily(counts[lily]).status == "wrong"


def test_ch06():
    pairs = collections.Counter()
    for story in load_stories("validation", source="sample", verbose=False)[:200]:
        for piece in regex.findall(GPT2_PATTERN, story):
            b = piece.encode("utf-8")
            pairs.update(zip(b, b[1:]))
    best = max(pairs, key=lambda p: (pairs[p], bytes([p[0]]), bytes([p[1]])))
    assert ch06.check_first_merge(bytes(best).decode()).correct
    second = pairs.most_common(2)[1][0]
    assert ch06.check_first_merge(bytes(second).decode()).status == "wrong"
    assert ch06.check_first_merge(None).status == "not attempted"
    assert ch06.check_bits_per_byte(1500 / math.log(2) / 4000).correct
    assert ch06.check_bits_per_byte(1500 / 4000).status == "wrong"  # nats, not bits
    assert ch06.check_bits_per_byte(1.5 / math.log(2)).status == "wrong"  # bits per token
