"""Is a generated story any good? Cheap numbers beyond the loss (chapter 14).

The validation loss says how well a model predicts held-out text; it does not say whether what the
model writes reads like a story. Three numbers, computed on the text itself, catch the usual
failures of a small model:

- `known_word_rate`: the share of generated words that occur in the training stories. An untrained
  model on a subword tokenizer glues random pieces into non-words ("Teddyoh"); a model that has
  learned spelling writes words it has seen.
- `repetition_rate`: the share of a story's word n-grams (default 4-grams) that already occurred
  earlier in the same story. A model stuck in a loop ("and the dog and the dog and the dog") scores
  high; a varied story scores near 0.
- `distinct_n`: distinct n-grams over all n-grams of a set of samples (Li et al., 2016, "distinct-n").
  Low values mean the samples say the same few things; it is a diversity number, computed across
  stories, where `repetition_rate` looks inside one.

None of them knows about grammar or plot: a string of random dictionary words scores well on all
three. They complement reading the samples and the loss; they do not replace either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")  # letters, with one inner apostrophe (don't, Lily's)


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (runs of letters, with an inner apostrophe); digits and
    punctuation are not words."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return WORD.findall(text.lower())


def _check_n(n) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r}: must be an integer >= 1")
    return n


def _tokens(sequence, name: str) -> list:
    """A text becomes its words; a sequence of words or token ids is used as it is."""
    if isinstance(sequence, str):
        return words(sequence)
    if not isinstance(sequence, Sequence):
        raise TypeError(f"{name} must be a str or a sequence of words or token ids, got {type(sequence).__name__}")
    return list(sequence)


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """The n-grams of `tokens` in order: len(tokens) - n + 1 tuples (none if the sequence is shorter)."""
    _check_n(n)
    tokens = list(tokens)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(story, n: int = 4) -> float:
    """Share of the n-grams of `story` (a text, or a sequence of words or ids) that repeat an earlier
    n-gram of the same story: 0 when no n-gram recurs, close to 1 for a loop."""
    tokens = _tokens(story, "story")
    grams = ngrams(tokens, n)
    if not grams:
        raise ValueError(f"story has {len(tokens)} words, fewer than n={n}: it has no {n}-grams to compare")
    seen: set[tuple] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def distinct_n(stories: Iterable, n: int = 2) -> float:
    """Distinct n-grams over all n-grams of `stories` (texts, or sequences of words or ids), pooled:
    1 when no n-gram occurs twice anywhere, small when the samples keep saying the same thing."""
    _check_n(n)
    if isinstance(stories, str):
        raise TypeError("stories must be a collection of stories (a list of str), not one str")
    total, distinct = 0, set()
    for story in stories:
        grams = ngrams(_tokens(story, "each story"), n)
        total += len(grams)
        distinct.update(grams)
    if total == 0:
        raise ValueError(f"the stories hold no {n}-grams (each is shorter than n={n} words)")
    return len(distinct) / total


def known_word_rate(story, vocabulary: set[str] | frozenset[str]) -> float:
    """Share of the words of `story` (a text or a list of words) that are in `vocabulary` (for
    example `vocabulary_of(training stories)`)."""
    if not isinstance(vocabulary, (set, frozenset)) or not vocabulary:
        raise ValueError("vocabulary must be a non-empty set of lower-case words (see vocabulary_of)")
    tokens = _tokens(story, "story")
    if not tokens:
        raise ValueError("story has no words to look up")
    return sum(w in vocabulary for w in tokens) / len(tokens)


def vocabulary_of(stories: Iterable[str]) -> frozenset[str]:
    """Every word (`words`) of `stories`: what a model trained on them has seen spelled."""
    vocabulary = set()
    for story in stories:
        vocabulary.update(words(story))
    return frozenset(vocabulary)


def story_quality(stories: Sequence[str], vocabulary: set[str] | frozenset[str], n_repeat: int = 4,
                  n_distinct: int = 2) -> dict[str, float]:
    """The three numbers for a set of samples: mean known-word rate and mean repetition rate per story
    (stories shorter than `n_repeat` words are left out of that mean), and distinct-n over all of them."""
    if isinstance(stories, str) or not stories:
        raise ValueError("stories must be a non-empty list of str")
    long_enough = [s for s in stories if len(words(s)) >= n_repeat]
    if not long_enough:
        raise ValueError(f"every story has fewer than n_repeat={n_repeat} words")
    with_words = [s for s in stories if words(s)]  # a sample that is only punctuation has no words to look up
    return {
        "known_word_rate": sum(known_word_rate(s, vocabulary) for s in with_words) / len(with_words),
        "repetition_rate": sum(repetition_rate(s, n_repeat) for s in long_enough) / len(long_enough),
        "distinct_n": distinct_n(stories, n_distinct),
    }
