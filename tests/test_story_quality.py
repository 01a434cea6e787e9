"""Story-quality numbers against values counted by hand and an independent Counter-based count."""

import random
from collections import Counter

import pytest

from slmbook.data import load_stories
from slmbook.story_quality import (
    distinct_n,
    known_word_rate,
    ngrams,
    repetition_rate,
    story_quality,
    vocabulary_of,
    words,
)


def test_words_are_lower_case_letters_with_inner_apostrophes():
    assert words("Lily's dog didn't run, 3 times! 'Yes' -- OK.") == ["lily's", "dog", "didn't", "run", "times",
                                                                      "yes", "ok"]
    assert words("") == []


def test_ngrams_in_order():
    assert ngrams("a b c d".split(), 2) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert ngrams([1, 2], 3) == []


def test_repetition_rate_by_hand():
    # 4-grams of "the dog and the dog and the dog": 5 of them, the last 2 repeat earlier ones
    loop = "the dog and the dog and the dog"
    assert repetition_rate(loop, 3) == pytest.approx(3 / 6)  # 3-grams: tda dat adt tda dat adt -> 3 repeats
    assert repetition_rate(loop, 4) == pytest.approx(2 / 5)
    assert repetition_rate("once upon a time there was a cat", 4) == 0.0
    assert repetition_rate([7, 7, 7, 7, 7], 1) == pytest.approx(4 / 5)  # token ids work too


def test_distinct_n_by_hand():
    # bigrams: (a b) (b a) (a b) | (a b) (b c): 5 in all, 3 distinct
    assert distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)
    assert distinct_n(["x y z"], 1) == 1.0


def _by_counter(stories, n):
    """distinct-n and per-story repetition rate from a Counter, written independently of the module."""
    pooled = Counter()
    rates = []
    for tokens in stories:
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        pooled.update(grams)
        rates.append(sum(c - 1 for c in Counter(grams).values()) / len(grams))
    return len(pooled) / sum(pooled.values()), rates


def test_against_a_counter_on_random_token_sequences():
    rng = random.Random(14)
    for _ in range(20):
        n = rng.randint(1, 4)
        stories = [[rng.randrange(6) for _ in range(rng.randint(n, 40))] for _ in range(rng.randint(1, 5))]
        expected_distinct, expected_rates = _by_counter(stories, n)
        assert distinct_n(stories, n) == pytest.approx(expected_distinct)
        for tokens, rate in zip(stories, expected_rates, strict=True):
            assert repetition_rate(tokens, n) == pytest.approx(rate)


def test_known_word_rate_and_vocabulary_of_real_stories():
    train = load_stories("train", source="sample", verbose=False)
    vocabulary = vocabulary_of(train)
    assert {"once", "upon", "time", "lily"} <= vocabulary
    assert known_word_rate(train[0], vocabulary) == 1.0  # a story the vocabulary was read from
    assert known_word_rate("Once upon a zorblat quuxish", vocabulary) == pytest.approx(3 / 5)
    held_out = [known_word_rate(s, vocabulary) for s in load_stories("validation", source="sample", verbose=False)]
    assert sum(held_out) / len(held_out) > 0.98  # real stories, unseen, use words the training stories spell


def test_story_quality_summarises_a_set_of_samples():
    vocabulary = frozenset("the dog ran and a cat sat".split())
    report = story_quality(["the dog ran and the dog ran and the dog ran", "a cat sat zzz"], vocabulary,
                           n_repeat=3, n_distinct=2)
    assert report["known_word_rate"] == pytest.approx((1.0 + 3 / 4) / 2)
    # the loop: 11 words, 9 trigrams of which 4 distinct (5 repeats); 10 + 3 bigrams, 4 + 3 distinct
    assert report["repetition_rate"] == pytest.approx((5 / 9 + 0.0) / 2)
    assert report["distinct_n"] == pytest.approx((4 + 3) / (10 + 3))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="n=0"):
        ngrams([1, 2], 0)
    with pytest.raises(ValueError, match="fewer than n=4"):
        repetition_rate("too short", 4)
    with pytest.raises(TypeError, match="not one str"):
        distinct_n("a single story", 2)
    with pytest.raises(ValueError, match="no 3-grams"):
        distinct_n(["a b", "c"], 3)
    with pytest.raises(ValueError, match="vocabulary"):
        known_word_rate("a cat", set())
    with pytest.raises(TypeError, match="text must be a str"):
        words(42)
    with pytest.raises(ValueError, match="non-empty list"):
        story_quality([], {"a"})
