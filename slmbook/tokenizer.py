"""Tokenizers: text -> token ids -> text (chapter 6).

Three granularities share one small interface (the subset of `tiktoken.Encoding` the book uses):
`name`, `n_vocab`, `eot_token`, `encode(text)`, `encode_ordinary(text)`, `decode(ids)`.

- `CharTokenizer`: one token per Unicode character seen in training (tiny vocabulary, long sequences).
- `WordTokenizer`: one token per *pre-token* of GPT-2's splitting regex (" the", ",", "\\n"), i.e.
  what BPE would produce if every word were merged whole; rare words become `<unk>`.
- `gpt2_encoding()`: GPT-2's byte-level BPE as a `tiktoken.Encoding`, built offline from the
  shipped `resources/gpt2/vocab.json` when the internet is not reachable.

Our own byte-level BPE (trained from scratch) lives in `slmbook/bpe.py`.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex
import tiktoken

from slmbook.data import EOT
from slmbook.hub import online

ENDOFTEXT = EOT  # the story separator of the data files, and GPT-2's special token
UNKNOWN = "<unk>"

# GPT-2's pre-tokenization regex as released (encoder.py): contractions, a letter run with an
# optional leading space, a digit run, a punctuation run, whitespace (the last space of a run is
# left to start the next word).
GPT2_PATTERN_ORIGINAL = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same splits written with possessive quantifiers, as tiktoken ships it: faster to match.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

GPT2_DIR = Path(__file__).parent / "resources" / "gpt2"
GPT2_HOST = "openaipublic.blob.core.windows.net"


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Split text into the pieces a BPE never merges across (words with their leading space, ...)."""
    return regex.findall(pattern, text)


def _check_text(text, name: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


class _VocabTokenizer:
    """A tokenizer whose vocabulary is a list of strings; id = position in the list.

    Ids 0 and 1 are `<unk>` (anything not seen in training) and `<|endoftext|>` (story separator).
    """

    name = "vocab"

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[:2] != [UNKNOWN, ENDOFTEXT]:
            raise ValueError(f"tokens must start with [{UNKNOWN!r}, {ENDOFTEXT!r}], got {tokens[:2]!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens must be unique")
        self.tokens = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.unk_token = 0
        self.eot_token = 1

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def _pieces(self, text: str) -> list[str]:
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`; `<|endoftext|>` inside the text is treated as ordinary characters."""
        _check_text(text)
        get = self.token_to_id.get
        return [get(p, self.unk_token) for p in self._pieces(text)]

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; each `<|endoftext|>` in the text becomes the single `eot_token`."""
        _check_text(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eot_token)
            ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.tokens):
                raise ValueError(f"token id {i} is out of range: allowed 0..{len(self.tokens) - 1}")
            out.append(self.tokens[int(i)])
        return "".join(out)

    def count_unknown(self, text: str) -> tuple[int, int]:
        """(unknown pieces, all pieces) in `text`: how much the vocabulary fails to cover."""
        pieces = self._pieces(text)
        return sum(p not in self.token_to_id for p in pieces), len(pieces)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} n_vocab={self.n_vocab}>"


class CharTokenizer(_VocabTokenizer):
    """One token per Unicode character: the smallest vocabulary that can spell the training text."""

    name = "char"

    def _pieces(self, text: str) -> list[str]:
        return list(text)

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        """Vocabulary = every character that occurs in `texts`, sorted (deterministic ids)."""
        chars: set[str] = set()
        for text in texts:
            _check_text(text, "texts item")
            chars.update(text.replace(ENDOFTEXT, ""))
        return cls([UNKNOWN, ENDOFTEXT, *sorted(chars)])


class WordTokenizer(_VocabTokenizer):
    """One token per GPT-2 pre-token (" cat", ",", "\\n\\n"); keeps the `max_vocab` most frequent.

    Splitting with GPT-2's regex keeps spaces inside tokens, so decode(encode(x)) == x whenever every
    piece is in the vocabulary, and the comparison with BPE (same splits, then merges) is fair.
    """

    name = "word"

    def __init__(self, tokens: Sequence[str], pattern: str = GPT2_PATTERN):
        super().__init__(tokens)
        self.pattern = pattern

    def _pieces(self, text: str) -> list[str]:
        return pretokenize(text, self.pattern)

    @classmethod
    def train(cls, texts: Iterable[str], max_vocab: int | None = None, pattern: str = GPT2_PATTERN) -> "WordTokenizer":
        """Vocabulary = the most frequent pre-tokens of `texts` (ties broken alphabetically)."""
        if max_vocab is not None and (not isinstance(max_vocab, int) or max_vocab < 3):
            raise ValueError(f"max_vocab={max_vocab!r}: must be None or an integer >= 3 (2 special tokens + 1 word)")
        counts: Counter[str] = Counter()
        for text in texts:
            _check_text(text, "texts item")
            for part in text.split(ENDOFTEXT):
                counts.update(pretokenize(part, pattern))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            ranked = ranked[: max_vocab - 2]
        return cls([UNKNOWN, ENDOFTEXT, *ranked], pattern)


# --- GPT-2's byte-level BPE -------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable alias for each byte (vocab.json writes token bytes with these characters).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are
    shifted to code points 256+, so that every token is a visible string (space -> 'Ġ', '\\n' -> 'Ċ').
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def gpt2_encoding_offline(directory: str | Path = GPT2_DIR) -> tiktoken.Encoding:
    """GPT-2's encoding rebuilt from vocab.json: token string -> bytes, rank = id, GPT-2's regex."""
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab = json.loads((Path(directory) / "vocab.json").read_text(encoding="utf-8"))
    ranks = {}
    special = {}
    for token, idx in vocab.items():
        if token == ENDOFTEXT:
            special[token] = idx
        else:
            ranks[bytes(byte_of[ch] for ch in token)] = idx
    if special.get(ENDOFTEXT) != 50256 or len(ranks) != 50256:
        raise ValueError(f"{directory}/vocab.json is not GPT-2's vocabulary (50,256 byte tokens + {ENDOFTEXT}=50256)")
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special, explicit_n_vocab=50257)


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's tokenizer (50,257 ids, `<|endoftext|>` = 50256): tiktoken's own when online, else offline.

    Both give the same ids; the offline one needs only the shipped vocab.json.
    """
    if online(GPT2_HOST):
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception:  # download refused or cache broken: the shipped files still work
            pass
    return gpt2_encoding_offline()


def token_pieces(encoding, text: str) -> list[tuple[int, bytes]]:
    """(id, bytes) of each token of `text`: what a tokenizer display colours one box per token.

    A byte-level token can hold part of a UTF-8 character (an emoji is 4 bytes, often 2-3 tokens),
    so pieces are bytes; their concatenation is always text.encode('utf-8') for a lossless encoding.
    """
    _check_text(text)
    ids = encoding.encode_ordinary(text)
    single = getattr(encoding, "decode_single_token_bytes", None) or getattr(encoding, "token_bytes", None)
    if single is not None:
        return [(i, single(i)) for i in ids]
    return [(i, encoding.decode([i]).encode("utf-8")) for i in ids]


# --- What tokenization does to numbers, spelling and other languages -----------------------------

UDHR_FILE = Path(__file__).parent / "resources" / "udhr" / "udhr-article1.json"


def udhr_article1() -> dict[str, str]:
    """Article 1 of the Universal Declaration of Human Rights, language -> text: the same sentence in
    several languages (UN/OHCHR translations, public domain; the file names its source), to measure
    how many tokens a tokenizer spends on each language."""
    return json.loads(UDHR_FILE.read_text(encoding="utf-8"))["article_1"]


def chunk_lengths(encoding, text: str) -> tuple[int, ...]:
    """UTF-8 bytes in each token of `text`: (2, 2) when '1234' is cut into '12' + '34'.

    Two numbers with different tuples are cut differently, so the same digit position lands in
    tokens of different kinds: what makes arithmetic hard for a model that reads such tokens.
    """
    _check_text(text)
    pieces = [raw for _, raw in token_pieces(encoding, text)]
    if b"".join(pieces) != text.encode("utf-8"):
        raise ValueError(f"encoding {getattr(encoding, 'name', encoding)!r} does not spell {text!r} losslessly")
    return tuple(len(raw) for raw in pieces)
