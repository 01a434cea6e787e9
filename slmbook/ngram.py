"""A count-based n-gram language model: the chain rule with a short memory (chapter 5).

The chain rule writes p(story) = Π p(t_i | t_1..t_{i-1}) exactly. An n-gram model approximates each
factor with only the last n-1 tokens: p(t_i | t_{i-n+1}..t_{i-1}) = count(context, t_i) / count(context).
Unseen combinations would get probability 0 (infinite perplexity on new text), so the counts are
smoothed:

- 'add-k': (count(context, t) + k) / (count(context) + k·V), the simplest fix;
- 'interpolated' (Jelinek-Mercer): a weighted mix of the n-gram, (n-1)-gram, ..., unigram estimates
  and the uniform distribution 1/V; orders whose context was never seen give their weight to the
  others, so the result is always a proper distribution.

Each story is padded at the start with n-1 end-of-text ids (the context "a story begins") and ends
with the end-of-text id as its last target, so the model also learns where stories stop.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

SMOOTHINGS = ("interpolated", "add-k")
STRATEGIES = ("greedy", "sample")


class NGramModel:
    """An n-gram model over token ids 0..vocab_size-1 (n=1 unigram, n=2 bigram, n=3 trigram, ...)."""

    def __init__(self, n: int, vocab_size: int, eot_token: int, smoothing: str = "interpolated", k: float = 0.01,
                 lambdas: Sequence[float] | None = None):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n={n!r}: must be a positive integer (1 = unigram, 2 = bigram, ...)")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size!r}: must be a positive integer")
        if not isinstance(eot_token, int) or not 0 <= eot_token < vocab_size:
            raise ValueError(f"eot_token={eot_token!r}: must be an id in 0..{vocab_size - 1}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing={smoothing!r}: allowed {SMOOTHINGS}")
        if not k > 0:
            raise ValueError(f"k={k!r}: add-k needs k > 0")
        if lambdas is None:  # weight of (uniform, unigram, bigram, ..., n-gram): most on the longest context
            raw = [0.01] + [2.0**m for m in range(n)]
            lambdas = [x / sum(raw) for x in raw]
        lambdas = [float(x) for x in lambdas]
        if len(lambdas) != n + 1 or any(x < 0 for x in lambdas) or not math.isclose(sum(lambdas), 1) or lambdas[0] <= 0:
            raise ValueError(f"lambdas={lambdas!r}: need n+1={n + 1} non-negative weights (uniform, unigram, ..., "
                             f"n-gram) summing to 1, with a positive uniform weight")
        self.n, self.vocab_size, self.eot_token = n, vocab_size, eot_token
        self.smoothing, self.k, self.lambdas = smoothing, float(k), lambdas
        # counts[m][context of length m] = Counter of next tokens, for m = 0..n-1
        self.counts: list[dict[tuple[int, ...], Counter]] = [defaultdict(Counter) for _ in range(n)]
        self.totals: list[dict[tuple[int, ...], int]] = [defaultdict(int) for _ in range(n)]

    def _padded(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is out of range 0..{self.vocab_size - 1}")
        return pad_story(ids, self.n, self.eot_token)

    def fit(self, stories: Iterable[Sequence[int]]) -> "NGramModel":
        """Count every (context, next token) pair of every order in the tokenized stories."""
        for ids in stories:
            seq = self._padded(ids)
            for i in range(self.n - 1, len(seq)):
                token = seq[i]
                for m in range(self.n):
                    context = tuple(seq[i - m : i])
                    self.counts[m][context][token] += 1
                    self.totals[m][context] += 1
        return self

    def predecessors(self, token: int) -> int:
        """How many distinct tokens were seen right before `token` in training: Kneser-Ney's
        "continuation count". A token frequent after one context only ("Once" after the start of a
        story) has a large count but few predecessors, which is why Kneser-Ney smoothing uses this
        number, and not the raw count, for the unigram that every other estimate falls back on."""
        if self.n < 2:
            raise ValueError("predecessors needs bigram counts: n >= 2")
        if not isinstance(token, int) or not 0 <= token < self.vocab_size:
            raise ValueError(f"token={token!r}: must be an id in 0..{self.vocab_size - 1}")
        return sum(1 for following in self.counts[1].values() if token in following)

    def _context(self, context: Sequence[int]) -> tuple[int, ...]:
        """The last n-1 tokens of context, padded on the left with end-of-text (a story's start)."""
        context = tuple(int(i) for i in context)[-(self.n - 1) :] if self.n > 1 else ()
        return (self.eot_token,) * (self.n - 1 - len(context)) + context

    def prob(self, context: Sequence[int], token: int) -> float:
        """p(token | the last n-1 tokens of context)."""
        context = self._context(context)
        if self.smoothing == "add-k":
            counter = self.counts[self.n - 1].get(context)
            seen = counter[token] if counter else 0
            return (seen + self.k) / (self.totals[self.n - 1].get(context, 0) + self.k * self.vocab_size)
        weights, estimate = self.lambdas[0], self.lambdas[0] / self.vocab_size
        for m in range(self.n):
            ctx = context[len(context) - m :] if m else ()
            total = self.totals[m].get(ctx, 0)
            if total:
                weights += self.lambdas[m + 1]
                estimate += self.lambdas[m + 1] * self.counts[m][ctx][token] / total
        return estimate / weights

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """p(· | context) over the whole vocabulary (sums to 1)."""
        context = self._context(context)
        if self.smoothing == "add-k":
            probs = np.full(self.vocab_size, self.k)
            counter = self.counts[self.n - 1].get(context)
            if counter:
                probs[list(counter)] += list(counter.values())
            return probs / probs.sum()
        probs = np.full(self.vocab_size, self.lambdas[0] / self.vocab_size)
        weights = self.lambdas[0]
        for m in range(self.n):
            ctx = context[len(context) - m :] if m else ()
            total = self.totals[m].get(ctx, 0)
            if total:
                counter = self.counts[m][ctx]
                weights += self.lambdas[m + 1]
                probs[list(counter)] += self.lambdas[m + 1] * np.fromiter(counter.values(), float) / total
        return probs / weights

    def story_nll(self, ids: Sequence[int]) -> tuple[float, int]:
        """(total negative log-likelihood in nats, number of predicted tokens) of one story (+ its eot)."""
        seq = self._padded(ids)
        total = 0.0
        for i in range(self.n - 1, len(seq)):
            total -= math.log(self.prob(seq[i - self.n + 1 : i], seq[i]))
        return total, len(seq) - (self.n - 1)

    def evaluate(self, stories: Iterable[Sequence[int]]) -> dict:
        """Total nats, tokens, mean cross-entropy (nats/token) and perplexity on held-out stories."""
        nats, tokens = 0.0, 0
        for ids in stories:
            s_nats, s_tokens = self.story_nll(ids)
            nats += s_nats
            tokens += s_tokens
        if tokens == 0:
            raise ValueError("stories is empty: nothing to evaluate")
        return {"nats": nats, "tokens": tokens, "cross_entropy": nats / tokens, "perplexity": math.exp(nats / tokens)}

    def generate(self, context: Sequence[int], max_tokens: int, strategy: str = "sample", temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0, stop_at_eot: bool = True) -> list[int]:
        """Continue `context` token by token: greedy (most likely next token) or sampling from
        p^(1/temperature), optionally restricted to the top_k most likely tokens."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: allowed {STRATEGIES}")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}: must be > 0 (use strategy='greedy' for the limit T -> 0)")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r}: must be None or a positive integer")
        rng = np.random.default_rng(seed)
        out = [int(i) for i in context]
        new: list[int] = []
        for _ in range(max_tokens):
            probs = self.distribution(out)
            if strategy == "greedy":
                token = int(np.argmax(probs))
            else:
                token = int(rng.choice(self.vocab_size, p=sampling_distribution(probs, temperature, top_k)))
            if stop_at_eot and token == self.eot_token:
                break
            out.append(token)
            new.append(token)
        return new


def pad_story(ids: Sequence[int], n: int, eot_token: int) -> list[int]:
    """A story as an n-gram model reads it: n-1 end-of-text tokens before it (so its first token has a
    full context: "start of a story") and one after it (so "the story ends here" is learned too)."""
    return [eot_token] * (n - 1) + [int(i) for i in ids] + [eot_token]


def story_ngrams(stories: Iterable[Sequence[int]], n: int, eot_token: int) -> list[tuple[int, ...]]:
    """Every n-gram of every story, padded as NGramModel trains: n-1 end-of-text tokens before the
    story (its start) and one after it (its end)."""
    grams = []
    for ids in stories:
        seq = pad_story(ids, n, eot_token)
        grams += [tuple(seq[i - n + 1 : i + 1]) for i in range(n - 1, len(seq))]
    return grams


def unseen_fraction(train: Iterable[Sequence[int]], held_out: Iterable[Sequence[int]], n: int, eot_token: int) -> float:
    """Fraction of the held-out stories' n-grams that never occur in the training stories: what a
    count-based model has no count for (and why longer n-grams stop generalising)."""
    seen = set(story_ngrams(train, n, eot_token))
    grams = story_ngrams(held_out, n, eot_token)
    return sum(g not in seen for g in grams) / len(grams)


def sampling_distribution(probs: np.ndarray, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """The distribution sampling draws from: p^(1/T) renormalised (T < 1 sharpens, T > 1 flattens),
    zero outside the top_k most likely tokens when top_k is given."""
    probs = np.asarray(probs, dtype=float)
    if top_k is not None and top_k < probs.size:
        cutoff = np.partition(probs, -top_k)[-top_k]
        keep = np.flatnonzero(probs >= cutoff)
        if keep.size > top_k:  # ties at the cutoff: keep the lowest ids, exactly top_k tokens
            keep = np.concatenate([np.flatnonzero(probs > cutoff), np.flatnonzero(probs == cutoff)])[:top_k]
        masked = np.zeros_like(probs)
        masked[keep] = probs[keep]
        probs = masked
    with np.errstate(divide="ignore"):
        logits = np.log(probs) / temperature
    logits -= logits.max()
    weights = np.exp(logits)
    return weights / weights.sum()
