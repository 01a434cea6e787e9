"""WordPiece, the Unigram language model and SentencePiece's whitespace symbol (chapter 6).

BPE (`slmbook.bpe`) is one of three subword schemes in use; the other two differ in how a vocabulary
is chosen and how a word is cut with it:

- **WordPiece** (BERT): pieces inside a word carry a `##` prefix. Training merges, like BPE, but the
  pair with the highest score count(ab) / (count(a) count(b)), so a pair of rare pieces that always
  occur together wins over a pair of common ones. Encoding is greedy: the longest vocabulary piece
  that starts the rest of the word, again and again; a word that cannot be spelled is `[UNK]`.
- **Unigram** (Kudo, 2018): every piece has a log-probability, and a word is cut into the pieces
  whose log-probabilities sum highest (Viterbi over the lattice of all cuts). Training starts from
  many candidate substrings and alternates EM (re-estimate each piece's probability from its
  expected count over all cuts) with pruning (drop the pieces whose loss costs the least likelihood).
- **SentencePiece** (Kudo & Richardson, 2018) trains BPE or Unigram on raw text: no language-specific
  pre-tokenizer, a space is just the symbol ▁ glued to the next word, so the same code works for a
  language written without spaces, and decoding is ''.join(pieces).replace('▁', ' ').

Everything is readable pure Python; `tests/test_subword.py` checks the encoders against the
Hugging Face `tokenizers` library given the same vocabulary and scores.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

import regex

SPACE = "\u2581"  # '▁', SentencePiece's visible space
PREFIX = "##"  # WordPiece's mark of a piece that continues a word
UNK = "[UNK]"
UNK_PENALTY = 10.0  # an unknown character scores this much below the rarest piece (as in SentencePiece)


def _check_positive_int(name: str, value, least: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r}: must be an integer >= {least}")


def _check_text(text, name: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def metaspace(text: str) -> list[str]:
    """SentencePiece's split: every space becomes ▁, one ▁ is put in front, and each piece starts at a ▁.

    Nothing about the language is assumed (no punctuation or contraction rules, as in GPT-2's regex).
    """
    _check_text(text)
    marked = text.replace(" ", SPACE)
    if not marked.startswith(SPACE):
        marked = SPACE + marked
    pieces, start = [], 0
    for i in range(1, len(marked) + 1):
        if i == len(marked) or marked[i] == SPACE:
            pieces.append(marked[start:i])
            start = i
    return pieces


# BERT's split before WordPiece: runs of characters that are neither space nor punctuation, and each
# punctuation mark alone (Unicode punctuation plus every ASCII symbol); BERT's extra rule of one piece per
# Chinese character is left out.
BERT_PATTERN = r"[^\s\p{P}!-/:-@\[-`{-~]+|[\p{P}!-/:-@\[-`{-~]"


def bert_words(text: str) -> list[str]:
    """BERT's pre-tokenization (the words WordPiece then cuts): split at spaces and around punctuation."""
    _check_text(text)
    return regex.findall(BERT_PATTERN, text)


def sentencepiece_text(text: str) -> str:
    """Whitespace collapsed to single spaces, as SentencePiece's default normalization does before ▁."""
    _check_text(text)
    return " ".join(text.split())


def word_counts(texts: Iterable[str], split=metaspace) -> Counter[str]:
    """How often each word (`split`'s piece) occurs in `texts`: what both trainers learn from."""
    counts: Counter[str] = Counter()
    for text in texts:
        _check_text(text, "texts item")
        counts.update(split(text))
    return counts


def _check_counts(counts) -> None:
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError(f"word_counts must be a non-empty mapping word -> count, got {type(counts).__name__}")


# --- WordPiece --------------------------------------------------------------------------------


def wordpiece_encode(word: str, vocab, unk: str = UNK, prefix: str = PREFIX, max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first: take the longest piece of `vocab` that starts the rest of `word`
    (with `prefix` unless at the word's start); if none does, the whole word is `unk`."""
    _check_text(word, "word")
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
        else:
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def _split_chars(word: str, prefix: str) -> list[str]:
    return [word[0]] + [prefix + c for c in word[1:]]


def _join(a: str, b: str, prefix: str) -> str:
    return a + b[len(prefix):]


def train_wordpiece(counts: Mapping[str, int], vocab_size: int, prefix: str = PREFIX,
                    unk: str = UNK, progress: bool = False) -> list[str]:
    """A WordPiece vocabulary of `vocab_size` pieces learned from `counts` (word -> count).

    Start from the characters (first of a word as is, the others with `prefix`); then repeatedly
    merge the adjacent pair with the highest score count(ab) / (count(a) count(b)) (ties: the more
    frequent pair, then the greater strings). Returns [unk, characters..., merged pieces in order].
    """
    _check_counts(counts)
    _check_positive_int("vocab_size", vocab_size, 2)
    words = {w: _split_chars(w, prefix) for w in counts if w}
    vocab = [unk, *sorted({p for pieces in words.values() for p in pieces})]
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size={vocab_size}: must be at least {len(vocab)} ([UNK] + every character seen)")
    piece_counts: Counter[str] = Counter()
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[str]] = {}

    def add(word: str, sign: int) -> None:
        pieces, n = words[word], counts[word]
        for p in pieces:
            piece_counts[p] += sign * n
        for pair in zip(pieces, pieces[1:], strict=False):
            pair_counts[pair] += sign * n
            if not pair_counts[pair]:
                del pair_counts[pair]
            if sign > 0:
                where.setdefault(pair, set()).add(word)

    for word in words:
        add(word, +1)
    from tqdm.auto import tqdm

    bar = tqdm(total=vocab_size - len(vocab), desc="WordPiece merges", disable=not progress)
    while len(vocab) < vocab_size:
        if not pair_counts:
            break
        (a, b), _ = max(pair_counts.items(),
                        key=lambda pc: (pc[1] / (piece_counts[pc[0][0]] * piece_counts[pc[0][1]]), pc[1], pc[0]))
        new = _join(a, b, prefix)
        for word in list(where.pop((a, b), ())):
            pieces = words[word]
            if not any(x == a and y == b for x, y in zip(pieces, pieces[1:], strict=False)):
                continue
            add(word, -1)
            merged, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and pieces[i] == a and pieces[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            words[word] = merged
            add(word, +1)
        if new not in vocab:
            vocab.append(new)
            bar.update()
    bar.close()
    return vocab


# --- Unigram ------------------------------------------------------------------------------------


def viterbi(word: str, log_probs: Mapping[str, float]) -> tuple[list[str], float]:
    """The cut of `word` into pieces of `log_probs` with the highest total log-probability, and that total.

    Each character not in the vocabulary is an unknown piece scoring UNK_PENALTY below the rarest
    piece, and runs of them are fused (as the `tokenizers` library does). Ties go to the longer last
    piece.
    """
    _check_text(word, "word")
    if not log_probs:
        raise ValueError("log_probs must be a non-empty mapping piece -> log-probability")
    longest = max(map(len, log_probs))
    unk_score = min(log_probs.values()) - UNK_PENALTY
    n = len(word)
    best = [0.0] + [-math.inf] * n
    back = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):
            piece = word[start:end]
            score = log_probs.get(piece)
            if score is None and end - start == 1:
                score = unk_score
            if score is not None and best[start] + score > best[end]:
                best[end], back[end] = best[start] + score, start
    pieces, end = [], n
    while end > 0:
        pieces.append(word[back[end]:end])
        end = back[end]
    pieces.reverse()
    fused: list[str] = []
    for p in pieces:
        if fused and p not in log_probs and fused[-1] not in log_probs:
            fused[-1] += p
        else:
            fused.append(p)
    return fused, best[n]


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi = max(a, b)
    return hi + math.log(math.exp(a - hi) + math.exp(b - hi))


def expected_counts(counts: Mapping[str, int], log_probs: Mapping[str, float]) -> tuple[Counter[str], float]:
    """The E-step: each piece's expected count over *all* cuts of every word (forward-backward on the
    lattice), weighted by the cut's probability, and the corpus log-likelihood."""
    longest = max(map(len, log_probs))
    expected: Counter[str] = Counter()
    total = 0.0
    for word, n_word in counts.items():
        n = len(word)
        alpha = [0.0] + [-math.inf] * n
        for end in range(1, n + 1):
            for start in range(max(0, end - longest), end):
                lp = log_probs.get(word[start:end])
                if lp is not None:
                    alpha[end] = _logsumexp(alpha[end], alpha[start] + lp)
        if alpha[n] == -math.inf:
            continue  # a character outside the vocabulary: this word teaches nothing
        beta = [-math.inf] * n + [0.0]
        for start in range(n - 1, -1, -1):
            for end in range(start + 1, min(n, start + longest) + 1):
                lp = log_probs.get(word[start:end])
                if lp is not None:
                    beta[start] = _logsumexp(beta[start], lp + beta[end])
        for start in range(n):
            for end in range(start + 1, min(n, start + longest) + 1):
                piece = word[start:end]
                lp = log_probs.get(piece)
                if lp is not None:
                    expected[piece] += n_word * math.exp(alpha[start] + lp + beta[end] - alpha[n])
        total += n_word * alpha[n]
    return expected, total


def _normalize(counts: Mapping[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {p: math.log(c / total) for p, c in counts.items() if c > 0}


def train_unigram(counts: Mapping[str, int], vocab_size: int, seed_size: int | None = None, max_piece: int = 12,
                  shrink: float = 0.75, em_steps: int = 2, progress: bool = False) -> tuple[dict[str, float], list[dict]]:
    """A Unigram vocabulary (piece -> log-probability) of at most `vocab_size` pieces learned from `counts`.

    Seed: every character plus the `seed_size` (default 4 x vocab_size) most frequent substrings of up
    to `max_piece` characters. Then, until the vocabulary is small enough: `em_steps` EM steps, and
    pruning to `shrink` of its size, dropping the pieces whose removal loses the least likelihood
    (count x (own log-prob - log-prob of the best cut without it)); characters are never dropped.
    Returns the vocabulary and one record per round: its size and the corpus log-likelihood per word
    (nats) after 0, 1, ... `em_steps` EM steps.
    """
    _check_counts(counts)
    _check_positive_int("vocab_size", vocab_size, 2)
    _check_positive_int("max_piece", max_piece, 1)
    _check_positive_int("em_steps", em_steps, 1)
    if not 0 < shrink < 1:
        raise ValueError(f"shrink={shrink!r}: must be between 0 and 1 (the share of pieces kept each round)")
    seed_size = 4 * vocab_size if seed_size is None else seed_size
    _check_positive_int("seed_size", seed_size, 1)
    chars: Counter[str] = Counter()
    substrings: Counter[str] = Counter()
    for word, n in counts.items():
        for start in range(len(word)):
            chars[word[start]] += n
            for end in range(start + 2, min(len(word), start + max_piece) + 1):
                substrings[word[start:end]] += n
    if vocab_size < len(chars):
        raise ValueError(f"vocab_size={vocab_size}: must be at least {len(chars)} (every character seen)")
    seed = dict(chars)
    seed.update(sorted(substrings.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))[:seed_size])
    log_probs = _normalize(seed)
    n_words = sum(counts.values())
    history = []
    from tqdm.auto import tqdm

    bar = tqdm(desc="Unigram EM and pruning", disable=not progress)
    while True:
        likelihoods = []
        for step in range(em_steps + 1):  # the last E-step measures the result and feeds the pruning
            expected, likelihood = expected_counts(counts, log_probs)  # E: counts over all cuts
            likelihoods.append(likelihood / n_words)
            if step < em_steps:  # M: probability = share of the expected counts
                log_probs = _normalize({p: expected.get(p, 0.0) for p in log_probs}
                                       | {c: expected.get(c, 0.0) + 1e-3 for c in chars})
        history.append({"pieces": len(log_probs), "log_likelihood_per_word": likelihoods})
        bar.update()
        if len(log_probs) <= vocab_size:
            break
        keep = max(vocab_size, int(len(log_probs) * shrink))
        loss = {}
        for piece, lp in log_probs.items():
            if len(piece) == 1:
                continue
            alternative = viterbi(piece, _without(log_probs, piece))[1]
            loss[piece] = expected.get(piece, 0.0) * (lp - alternative)
        ranked = sorted(loss, key=lambda p: (-loss[p], p))
        kept = set(chars) | set(ranked[:keep - len(chars)])
        log_probs = _normalize({p: math.exp(v) for p, v in log_probs.items() if p in kept})
    bar.close()
    return log_probs, history


def _without(log_probs: Mapping[str, float], piece: str) -> dict[str, float]:
    """The sub-vocabulary that can cut `piece` (its substrings), `piece` itself left out."""
    n = len(piece)
    subs = {piece[i:j] for i in range(n) for j in range(i + 1, n + 1)} - {piece}
    return {p: log_probs[p] for p in subs if p in log_probs}
