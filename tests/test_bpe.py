"""Our byte-level BPE against brute-force references, GPT-2's merges, and tiktoken."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmbook.bpe import BPETokenizer
from slmbook.tokenizer import ENDOFTEXT, GPT2_DIR, GPT2_PATTERN, bytes_to_unicode, gpt2_encoding_offline

RESOURCES = Path(__file__).parent.parent / "slmbook" / "resources"


def real_stories(n: int, split: str = "train") -> list[str]:
    name = {"train": "tinystories-train-v1-head.txt", "validation": "tinystories-valid-v1-head1000.txt"}[split]
    text = (RESOURCES / "tinystories" / name).read_text(encoding="utf-8")
    return [s.strip("\n") for s in text.split(ENDOFTEXT)][:n]


# --- brute-force references: recount everything, apply merges one by one -----------------------


def reference_train(texts: list[str], num_merges: int) -> list[tuple[int, int]]:
    """Textbook BPE: every step counts all pairs from scratch and merges the most frequent one."""
    words: Counter[tuple[int, ...]] = Counter()
    for text in texts:
        for part in text.split(ENDOFTEXT):
            for piece in regex.findall(GPT2_PATTERN, part):
                words[tuple(piece.encode("utf-8"))] += 1
    vocab = [bytes([i]) for i in range(256)]
    merges = []
    for _ in range(num_merges):
        pairs: Counter[tuple[int, int]] = Counter()
        for word, n in words.items():
            for i in range(len(word) - 1):
                pairs[word[i], word[i + 1]] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], vocab[p[0]], vocab[p[1]]))
        merged = vocab[best[0]] + vocab[best[1]]
        new_id = vocab.index(merged) if merged in vocab else len(vocab)
        if new_id == len(vocab):
            vocab.append(merged)
        merges.append(best)
        words = _merge_all(words, best, new_id)
    return merges


def _merge_all(words: Counter, pair: tuple[int, int], new_id: int) -> Counter:
    out: Counter = Counter()
    for word, n in words.items():
        out[reference_apply(list(word), pair, new_id)] += n
    return out


def reference_apply(ids: list[int], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def reference_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Apply every merge, in the order learned, to every pre-token."""
    out: list[int] = []
    for piece in regex.findall(GPT2_PATTERN, text):
        ids = tuple(piece.encode("utf-8"))
        for pair in tok.merges:
            ids = reference_apply(list(ids), pair, tok.merge_result[pair])
        out.extend(ids)
    return out


# --- training ---------------------------------------------------------------------------------


def test_merges_equal_brute_force_on_real_stories():
    stories = real_stories(60)
    tok = BPETokenizer.train(stories, vocab_size=256 + 1 + 150)
    assert len(tok.merges) == 150
    assert tok.merges == reference_train(stories, 150)
    # the pair counts reported at each merge never increase (most frequent pair first)
    assert all(a >= b for a, b in zip(tok.merge_counts, tok.merge_counts[1:], strict=False))


small_text = st.text(alphabet=st.sampled_from("ab c\n'é1"), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(small_text, min_size=1, max_size=6), num_merges=st.integers(0, 30))
def test_merges_equal_brute_force_on_random_corpora(texts, num_merges):
    tok = BPETokenizer.train(texts, vocab_size=257 + num_merges)
    assert tok.merges == reference_train(texts, num_merges)
    assert tok.n_vocab <= 257 + num_merges


def test_training_is_independent_of_story_order():
    stories = real_stories(40)
    a = BPETokenizer.train(stories, vocab_size=400)
    b = BPETokenizer.train(stories[::-1], vocab_size=400)
    assert a.merges == b.merges


def test_training_stops_when_no_pair_is_left():
    tok = BPETokenizer.train(["aaaa"], vocab_size=1000)
    # "aaaa" -> "aa aa" -> "aaaa": two merges, then a single token
    assert tok.merges == [(97, 97), (256, 256)]
    assert tok.encode("aaaa") == [257]


def test_merges_do_not_cross_special_tokens_or_pretokens():
    tok = BPETokenizer.train(["ab" + ENDOFTEXT + "ab ab"], vocab_size=300)
    for token in tok.vocab:
        assert b"<|" not in token and b" b" not in token


# --- encoding ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return BPETokenizer.train(real_stories(300), vocab_size=700)


def test_encode_equals_brute_force_on_held_out_stories(trained):
    enc = trained.to_tiktoken()
    for story in real_stories(20, "validation"):
        expected = reference_encode(trained, story)
        assert trained.encode_ordinary(story) == expected
        assert enc.encode_ordinary(story) == expected


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(small_text, min_size=1, max_size=6), probe=small_text, num_merges=st.integers(0, 30))
def test_encode_and_tiktoken_equal_brute_force_on_random_corpora(texts, probe, num_merges):
    tok = BPETokenizer.train(texts, vocab_size=257 + num_merges)
    enc = tok.to_tiktoken()
    for text in [*texts, probe]:
        expected = reference_encode(tok, text)
        assert tok.encode_ordinary(text) == expected
        assert enc.encode_ordinary(text) == expected


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_on_arbitrary_unicode(trained, text):
    enc = trained.to_tiktoken()
    assert trained.decode(trained.encode_ordinary(text)) == text
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert trained.encode_ordinary(text) == enc.encode_ordinary(text)


def test_special_tokens_encode_to_their_id(trained):
    ids = trained.encode("Once." + ENDOFTEXT + "Then.")
    assert ids.count(trained.eot_token) == 1
    assert trained.eot_token == trained.n_vocab - 1
    assert trained.decode(ids) == "Once." + ENDOFTEXT + "Then."
    enc = trained.to_tiktoken()
    assert enc.encode("Once." + ENDOFTEXT + "Then.", allowed_special="all") == ids
    assert enc.eot_token == trained.eot_token


def test_gpt2_merges_reproduce_tiktoken_gpt2():
    """Load GPT-2's 50,000 published merges into our class: its pure-Python encoder must cut
    text exactly like tiktoken's GPT-2 (ids differ: GPT-2 does not number bytes by value)."""
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    ids_of = {bytes([i]): i for i in range(256)}
    merges = []
    for line in (GPT2_DIR / "merges.txt").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#version"):
            continue
        left, right = (bytes(byte_of[c] for c in part) for part in line.split(" "))
        merges.append((ids_of[left], ids_of[right]))
        ids_of.setdefault(left + right, len(ids_of))
    ours = BPETokenizer(merges)
    assert ours.n_vocab == 50257
    gpt2 = gpt2_encoding_offline()
    for story in real_stories(30, "validation") + ["Hello world", "  tabs\t\tand\r\nnewlines  ", "naïve café 東京 🙂"]:
        expected = [gpt2.decode_single_token_bytes(i) for i in gpt2.encode_ordinary(story)]
        assert [ours.token_bytes(i) for i in ours.encode_ordinary(story)] == expected


# --- save / load, errors ----------------------------------------------------------------------


def test_save_load_round_trip(trained, tmp_path):
    path = trained.save(tmp_path / "bpe.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["vocab"]["300"] == trained.vocab[300].decode("utf-8", errors="backslashreplace")
    loaded = BPETokenizer.load(path)
    assert loaded.merges == trained.merges
    assert loaded.vocab == trained.vocab
    assert loaded.special_ids == trained.special_ids
    story = real_stories(1, "validation")[0]
    assert loaded.encode(story) == trained.encode(story)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(TypeError, match="texts"):
        BPETokenizer.train("abc", vocab_size=300)
    with pytest.raises(TypeError, match="special_tokens"):
        BPETokenizer.train(["abc"], vocab_size=300, special_tokens=ENDOFTEXT)
    with pytest.raises(ValueError, match="does not exist"):
        BPETokenizer([(0, 300)])
    with pytest.raises(ValueError, match="out of range"):
        BPETokenizer([]).decode([10_000])
