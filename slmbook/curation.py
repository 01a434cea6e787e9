"""Cleaning a pretraining corpus: normalization, exact and near deduplication, quality filters (chapter 4).

Every step returns what it kept *and* counts of what it changed or removed, so that a curation run
can be reported, never silently applied.

- `normalize`: repairs mojibake (UTF-8 text that was once decoded as Windows-1252: `â€œ` for `“`),
  Unicode NFC, Windows line endings.
- `exact_dedup`: a hash of each story (whitespace-normalized) finds copies identical up to whitespace.
- `near_duplicates`: MinHash signatures of word 5-gram shingles and locality-sensitive hashing
  (LSH) find pairs of stories whose shingle sets overlap a lot (Jaccard similarity), without
  comparing all n² pairs; candidate pairs are then confirmed with the exact Jaccard similarity.
- `quality_filters`: length, repetition and non-printable-character filters.
- `curate`: all of the above in order, with a `CurationReport`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

# --- normalization: mojibake --------------------------------------------------------------------

# Windows-1252 as browsers (and most mojibake) use it: its 5 undefined bytes map to U+0081 etc.
_CP1252_CHAR = {b: bytes([b]).decode("cp1252", errors="strict") if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D) else chr(b)
                for b in range(0x80, 0x100)}
_BYTE_OF = {ch: b for b, ch in _CP1252_CHAR.items()}


def _char_class(lo: int, hi: int) -> str:
    return "[" + "".join(re.escape(_CP1252_CHAR[b]) for b in range(lo, hi + 1)) + "]"


_CONT = _char_class(0x80, 0xBF)  # characters standing for UTF-8 continuation bytes
# A UTF-8 lead byte followed by the right number of continuation bytes, each shown as its cp1252 char.
_MOJIBAKE = re.compile(
    f"{_char_class(0xC2, 0xDF)}{_CONT}|{_char_class(0xE0, 0xEF)}{_CONT}{{2}}|{_char_class(0xF0, 0xF4)}{_CONT}{{3}}"
)
# "â€" with its third byte missing: 0x9D is undefined in cp1252, so "”" (E2 80 9D) often lost it.
_LOST_QUOTE = f"â€(?!{_CONT})"
_DAMAGED = re.compile(f"(?P<sequence>{_MOJIBAKE.pattern})|(?P<lost>{_LOST_QUOTE})")


# Characters a real mojibake sequence decodes to: Latin, Greek, Cyrillic, punctuation, symbols, CJK,
# Hangul, emoji. Anything else (IPA, NKo, ...) is more likely legitimate text such as "groß”".
_PLAUSIBLE = ((0xA0, 0x24F), (0x370, 0x4FF), (0x2000, 0x2BFF), (0x3000, 0x9FFF), (0xAC00, 0xD7AF), (0x1F000, 0x1FAFF))


def _repair_match(match: re.Match) -> str:
    try:
        fixed = bytes(_BYTE_OF[ch] for ch in match.group()).decode("utf-8")
    except UnicodeDecodeError:  # not a valid UTF-8 sequence after all: leave the text as it is
        return match.group()
    if not any(lo <= ord(fixed) <= hi for lo, hi in _PLAUSIBLE):
        return match.group()
    return fixed


def _repair(text: str, found: list[tuple[str, str]]) -> str:
    """One left-to-right pass over the damaged text (a repaired character may itself look like a
    continuation byte, so both rules must see the original)."""

    def repair(match: re.Match) -> str:
        fixed = "”" if match.lastgroup == "lost" else _repair_match(match)
        if fixed != match.group():
            found.append((match.group(), fixed))
        return fixed

    return _DAMAGED.sub(repair, text)


def find_mojibake(text: str) -> list[tuple[str, str]]:
    """(damaged, repaired) for every mojibake sequence in `text`, e.g. ('â€œ', '“')."""
    found: list[tuple[str, str]] = []
    _repair(text, found)
    return found


def repair_mojibake(text: str) -> tuple[str, Counter]:
    """Undo UTF-8-read-as-Windows-1252: `â€œ` -> `“`, `Ã©` -> `é`; returns (text, counts).

    counts['mojibake'] = sequences re-decoded; counts['mojibake lost byte'] = lone `â€` repaired
    as `”` (its third byte 0x9D has no Windows-1252 character and was dropped when the text was
    damaged). A heuristic: a sequence is repaired only when it is valid UTF-8 and decodes to a
    plausible character, which leaves ordinary accented text ("café", "naïve", "groß”") alone.
    """
    found: list[tuple[str, str]] = []
    text = _repair(text, found)
    counts: Counter = Counter()
    for bad, _ in found:
        counts["mojibake lost byte" if bad == "â€" else "mojibake"] += 1
    return text, counts


def normalize(text: str) -> tuple[str, Counter]:
    """Mojibake repair, Unicode NFC, '\\r\\n' -> '\\n'; returns (text, counts of each change)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text, counts = repair_mojibake(text)
    nfc = unicodedata.normalize("NFC", text)
    if nfc != text:
        counts["unicode NFC"] += 1
        text = nfc
    if "\r" in text:
        counts["line endings"] += text.count("\r")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, counts


def damage_mojibake(text: str) -> str:
    """The damage `repair_mojibake` undoes, done on purpose: the UTF-8 bytes of `text` read as
    Windows-1252, its undefined bytes (0x9D of `”` among them) dropped. Applied to a real story
    with curly quotes it gives what the official TinyStories V1 validation file holds."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text.encode("utf-8").decode("cp1252", errors="ignore")


# --- exact deduplication ----------------------------------------------------------------------


def story_hash(story: str) -> str:
    """A fingerprint of a story: blake2b of its text with runs of whitespace made one space."""
    canonical = " ".join(story.split())
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def exact_dedup(stories: Sequence[str]) -> tuple[list[str], list[int]]:
    """Keep the first copy of each story (up to whitespace); returns (kept, indices removed)."""
    seen: set[str] = set()
    kept, removed = [], []
    for i, story in enumerate(stories):
        h = story_hash(story)
        if h in seen:
            removed.append(i)
        else:
            seen.add(h)
            kept.append(story)
    return kept, removed


# --- near deduplication: MinHash + LSH ----------------------------------------------------------

_PRIME = (1 << 32) - 5  # largest prime below 2**32: a*x + b stays below 2**64 for 32-bit a, b, x
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[int]:
    """The set of word n-grams of `text` (lowercased), each as a 32-bit CRC hash.

    A text shorter than n words is one shingle (all its words).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: shingle length must be a positive integer")
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {zlib.crc32(" ".join(words).encode("utf-8"))}
    return {zlib.crc32(" ".join(words[i : i + n]).encode("utf-8")) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|: the similarity MinHash estimates."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class MinHasher:
    """`num_perm` random hash functions h(x) = (a·x + b) mod p; a signature keeps each one's minimum.

    For two sets, P(their minima agree) = Jaccard similarity, so the fraction of equal entries of
    two signatures estimates it with standard deviation sqrt(J(1-J)/num_perm). This linear hash
    family is only approximately min-wise independent: feed it well-mixed values such as the CRC
    hashes of `shingles`, not structured ones like consecutive integers, whose minima are biased.
    """

    def __init__(self, num_perm: int = 128, seed: int = 0):
        if not isinstance(num_perm, int) or num_perm < 1:
            raise ValueError(f"num_perm={num_perm!r}: must be a positive integer")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)

    def signature(self, shingle_set: Iterable[int]) -> np.ndarray:
        x = np.fromiter(shingle_set, dtype=np.uint64)
        if x.size == 0:
            raise ValueError("cannot MinHash an empty set of shingles")
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _PRIME).min(axis=1)

    def signatures(self, sets: Sequence[set[int]], progress: bool = False) -> np.ndarray:
        """(len(sets), num_perm) uint64 matrix of signatures."""
        return np.stack([self.signature(s) for s in tqdm(sets, desc="MinHash", disable=not progress)])


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of signature entries that agree."""
    return float(np.mean(sig_a == sig_b))


def nearest_similarity(signatures: np.ndarray, block: int = 64) -> np.ndarray:
    """For each row of `signatures` (one MinHash signature per story), the estimated Jaccard
    similarity to its most similar *other* row: all pairs, `block` rows at a time to bound memory."""
    n = len(signatures)
    nearest = np.zeros(n)
    for start in range(0, n, block):
        agree = (signatures[start:start + block, None, :] == signatures[None, :, :]).mean(axis=2)
        agree[np.arange(agree.shape[0]), np.arange(start, start + agree.shape[0])] = 0  # not itself
        nearest[start:start + block] = agree.max(axis=1)
    return nearest


def lsh_candidate_probability(similarity, bands: int, rows: int):
    """P(two sets of this Jaccard similarity share at least one band) = 1 - (1 - s^r)^b."""
    return 1 - (1 - np.asarray(similarity, dtype=float) ** rows) ** bands


def lsh_bands(num_perm: int, threshold: float, miss_weight: float = 4.0) -> tuple[int, int]:
    """(bands, rows), bands·rows <= num_perm, whose S-curve best separates pairs below and above
    `threshold`: it minimises the area of false positives (below the threshold) plus `miss_weight`
    times the area of false negatives (above it). Misses weigh more because every candidate is
    confirmed with the exact Jaccard similarity anyway: a false positive only costs a comparison."""
    if not isinstance(num_perm, int) or num_perm < 1:
        raise ValueError(f"num_perm={num_perm!r}: must be a positive integer")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold={threshold!r}: must be strictly between 0 and 1")
    below = np.linspace(0, threshold, 201)
    above = np.linspace(threshold, 1, 201)

    def error(br: tuple[int, int]) -> float:
        false_pos = np.trapezoid(lsh_candidate_probability(below, *br), below)
        false_neg = np.trapezoid(1 - lsh_candidate_probability(above, *br), above)
        return float(false_pos + miss_weight * false_neg)

    options = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    return min(options, key=error)


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of rows that agree on all `rows` entries of at least one band."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands*rows={bands}*{rows} is more than the signature length {signatures.shape[1]}")
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        for i in range(block.shape[0]):
            buckets.setdefault(block[i].tobytes(), []).append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    pairs.add((members[x], members[y]))
    return pairs


@dataclass
class NearDuplicates:
    """Result of `near_duplicates`: confirmed pairs, their clusters and what to drop."""

    pairs: list[tuple[int, int, float]]  # (i, j, exact Jaccard) with i < j
    clusters: list[list[int]]  # groups of 2+ stories linked by pairs
    candidates: int  # pairs LSH proposed (before exact confirmation)
    bands: int
    rows: int

    @property
    def to_remove(self) -> list[int]:
        """All but the first story of each cluster."""
        return sorted(i for cluster in self.clusters for i in cluster[1:])


def near_duplicates(stories: Sequence[str], threshold: float = 0.8, num_perm: int = 128, shingle_words: int = 5,
                    seed: int = 0, progress: bool = False) -> NearDuplicates:
    """Pairs of stories with Jaccard similarity >= threshold between their word-shingle sets.

    MinHash + LSH propose candidates in about linear time; each is confirmed with the exact Jaccard
    similarity, so every reported pair is real; a pair LSH misses is possible (the S-curve of
    `lsh_candidate_probability`), rarely for similarities well above the threshold.
    """
    sets = [shingles(s, shingle_words) for s in stories]
    if not sets:
        return NearDuplicates([], [], 0, 0, 0)
    signatures = MinHasher(num_perm, seed).signatures(sets, progress=progress)
    bands, rows = lsh_bands(num_perm, threshold)
    candidates = lsh_candidates(signatures, bands, rows)
    pairs = []
    for i, j in sorted(candidates):
        sim = jaccard(sets[i], sets[j])
        if sim >= threshold:
            pairs.append((i, j, sim))
    return NearDuplicates(pairs, _clusters(len(stories), pairs), len(candidates), bands, rows)


def _clusters(n: int, pairs: Iterable[tuple[int, int, float]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


# --- edited copies and noise: what curation has to catch --------------------------------------

# A sentence: from a non-space character to the first run of . ! ? (and closing quotes) followed by
# whitespace and a capital, a digit or an opening quote, or to the end of the text.
_SENTENCE = re.compile(r"""\S.*?(?:[.!?]+["”’']*(?=\s+["“‘A-Z0-9])|\s*\Z)""", re.S)
_NAME = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]+\b")


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text` (a simple rule: ., ! or ? then space)."""
    return [m.span() for m in _SENTENCE.finditer(text)]


def drop_sentence(text: str, index: int) -> str:
    """`text` without its sentence number `index` and the whitespace that separated it from the next
    one (from the previous one, for the last sentence)."""
    spans = sentences(text)
    if not isinstance(index, int) or isinstance(index, bool) or not -len(spans) <= index < len(spans):
        raise ValueError(f"index={index!r}: the text has {len(spans)} sentences")
    index %= len(spans)
    start, end = spans[index]
    if index + 1 < len(spans):
        return text[:start] + text[spans[index + 1][0]:]
    return text[: spans[index - 1][1] if index else 0] + text[end:]


def character_names(text: str) -> Counter:
    """Capitalized words that occur after a lowercase word or a comma, i.e. not only at the start of
    a sentence: in a children's story, its characters' names (and 'Mom', 'Dad')."""
    return Counter(_NAME.findall(text))


def swap_name(text: str, old: str, new: str) -> str:
    """Every mention of the name `old` (as a whole word) replaced by `new`."""
    pattern = re.compile(rf"\b{re.escape(old)}\b")
    if not pattern.search(text):
        raise ValueError(f"old={old!r}: the name does not occur in the text")
    return pattern.sub(new, text)


def curl_quotes(text: str) -> str:
    """Straight quotes made typographic: " -> “ or ” and ' -> ‘ or ’ (opening after a space, a
    bracket or the start of a line, closing elsewhere), as a word processor does."""
    def curl(match: re.Match) -> str:
        opening = match.start() == 0 or text[match.start() - 1] in " \n\t([{“‘—–"
        if match.group() == '"':
            return "“" if opening else "”"
        return "‘" if opening else "’"

    return re.sub("[\"']", curl, text)


def truncate(text: str, fraction: float) -> str:
    """The first `fraction` of the characters of `text` (cut mid-word, as a broken download is)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: must be in (0, 1]")
    return text[: max(1, round(len(text) * fraction))].rstrip()


def add_noise(stories: Sequence[str], mojibake: bool = True, truncate_rate: float = 0.25,
              duplicate_rate: float = 0.05, copies: int = 20, boilerplate: str | None = None,
              boilerplate_rate: float = 0.0, seed: int = 0) -> tuple[list[str], Counter]:
    """Real stories made dirty the way real corpora are; returns (noisy stories, counts).

    - mojibake: every story with a non-ASCII character damaged by `damage_mojibake`;
    - truncation: a `truncate_rate` share of the stories cut to 20-80% of their length;
    - duplicates: a `duplicate_rate` share of the stories repeated `copies` times in all (mirrored
      pages; the copies go to the end, so the first copy of every story is where it was);
    - boilerplate: the text `boilerplate` appended to a `boilerplate_rate` share, as a footer is.

    counts: stories changed by each kind of noise ('duplicates' counts the extra copies).
    """
    for name, rate in (("truncate_rate", truncate_rate), ("duplicate_rate", duplicate_rate),
                       ("boilerplate_rate", boilerplate_rate)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{name}={rate!r}: must be a fraction in [0, 1]")
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise ValueError(f"copies={copies!r}: must be a positive integer (1 = no extra copy)")
    if boilerplate_rate > 0 and not boilerplate:
        raise ValueError("boilerplate_rate > 0 needs a boilerplate text (e.g. a real paragraph)")
    rng = np.random.default_rng(seed)
    noisy, repeated, counts = [], [], Counter()
    for story in stories:
        cut, copied, footer = (rng.random() < rate for rate in (truncate_rate, duplicate_rate, boilerplate_rate))
        length = rng.uniform(0.2, 0.8)
        if mojibake and damage_mojibake(story) != story:
            story = damage_mojibake(story)
            counts["mojibake"] += 1
        if cut:
            story = truncate(story, length)
            counts["truncated"] += 1
        if footer:
            story = story + "\n\n" + boilerplate
            counts["boilerplate"] += 1
        if copied and copies > 1:
            repeated += [story] * (copies - 1)
            counts["duplicates"] += copies - 1
        noisy.append(story)
    return noisy + repeated, counts


# --- quality filters --------------------------------------------------------------------------


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def repetition_ratio(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one (0 = no repetition; looping text -> 1)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def non_printable_ratio(text: str) -> float:
    """Fraction of characters that are control/format/unassigned (Unicode category C*), except \\n, \\t."""
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch not in "\n\t" and unicodedata.category(ch).startswith("C"))
    return bad / len(text)


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a story must respect to be kept."""

    min_words: int = 20
    max_words: int = 1000
    max_repetition: float = 0.3  # fraction of repeated word 3-grams
    max_non_printable: float = 0.01


def quality_filters(stories: Sequence[str], thresholds: QualityThresholds = QualityThresholds()) -> tuple[list[str], dict[str, list[int]]]:
    """Apply each filter; returns (kept, {filter name: indices it rejects}).

    Every filter is counted on all stories, so one story can be rejected by several filters; a
    story is kept only if it passes them all.
    """
    t = thresholds
    rejected: dict[str, list[int]] = {"too short": [], "too long": [], "repetitive": [], "non-printable": []}
    kept = []
    for i, story in enumerate(stories):
        words = word_count(story)
        fails = []
        if words < t.min_words:
            fails.append("too short")
        if words > t.max_words:
            fails.append("too long")
        if repetition_ratio(story) > t.max_repetition:
            fails.append("repetitive")
        if non_printable_ratio(story) > t.max_non_printable:
            fails.append("non-printable")
        for name in fails:
            rejected[name].append(i)
        if not fails:
            kept.append(story)
    return kept, rejected


# --- the whole pipeline -----------------------------------------------------------------------


@dataclass
class CurationReport:
    """What `curate` did, step by step (counts, and examples of removed stories)."""

    stories_in: int = 0
    normalized: Counter = field(default_factory=Counter)  # change -> occurrences
    stories_normalized: int = 0  # stories with at least one change
    exact_duplicates: int = 0
    near_duplicates: int = 0
    near_duplicate_pairs: int = 0
    quality_rejected: dict[str, int] = field(default_factory=dict)  # filter -> stories it rejects
    quality_removed: int = 0
    stories_out: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # step -> a few removed stories

    def table(self) -> list[tuple[str, int]]:
        """(step, stories left after it) rows for a before/after summary."""
        after_exact = self.stories_in - self.exact_duplicates
        after_near = after_exact - self.near_duplicates
        return [("input", self.stories_in), ("after exact dedup", after_exact),
                ("after near dedup", after_near), ("after quality filters", self.stories_out)]


def curate(stories: Sequence[str], near_threshold: float | None = 0.8, thresholds: QualityThresholds = QualityThresholds(),
           num_perm: int = 128, seed: int = 0, n_examples: int = 3, progress: bool = False) -> tuple[list[str], CurationReport]:
    """normalize -> exact dedup -> near dedup (skipped if near_threshold is None) -> quality filters."""
    report = CurationReport(stories_in=len(stories))
    cleaned = []
    for story in stories:
        fixed, counts = normalize(story)
        report.normalized.update(counts)
        report.stories_normalized += bool(counts)
        cleaned.append(fixed)
    kept, removed = exact_dedup(cleaned)
    report.exact_duplicates = len(removed)
    report.examples["exact duplicates"] = [cleaned[i] for i in removed[:n_examples]]
    if near_threshold is not None:
        near = near_duplicates(kept, near_threshold, num_perm=num_perm, seed=seed, progress=progress)
        drop = set(near.to_remove)
        report.near_duplicates = len(drop)
        report.near_duplicate_pairs = len(near.pairs)
        report.examples["near duplicates"] = [kept[i] for i in sorted(drop)[:n_examples]]
        kept = [s for i, s in enumerate(kept) if i not in drop]
    before = kept
    kept, rejected = quality_filters(kept, thresholds)
    report.quality_rejected = {name: len(idx) for name, idx in rejected.items()}
    report.quality_removed = len(before) - len(kept)
    for name, idx in rejected.items():
        report.examples[name] = [before[i] for i in idx[:n_examples]]
    report.stories_out = len(kept)
    return kept, report
