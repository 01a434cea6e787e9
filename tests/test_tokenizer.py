"""Character, word and GPT-2 tokenizers: round trips, known ids, and `transformers` as a reference."""

from __future__ import annotations

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import slmbook.tokenizer as tokenizer_module
from slmbook.data import load_stories
from slmbook.tokenizer import (
    ENDOFTEXT,
    GPT2_DIR,
    GPT2_PATTERN,
    GPT2_PATTERN_ORIGINAL,
    CharTokenizer,
    WordTokenizer,
    bytes_to_unicode,
    gpt2_encoding,
    gpt2_encoding_offline,
)


@pytest.fixture(scope="module")
def stories():
    return load_stories("train", source="sample", verbose=False)[:300]


@pytest.fixture(scope="module")
def valid():
    return load_stories("validation", source="sample", verbose=False)[:50]


# --- GPT-2 ------------------------------------------------------------------------------------


def test_gpt2_known_ids():
    enc = gpt2_encoding_offline()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" the") == [262]
    assert enc.encode(ENDOFTEXT, allowed_special="all") == [50256]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256


def test_gpt2_matches_transformers_on_real_stories(valid):
    """Hugging Face's `tokenizers` (Rust BPE, the engine of transformers' GPT-2 tokenizer) with the
    same vocab.json and merges.txt is an independent implementation to compare with."""
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(GPT2_DIR / "vocab.json"), str(GPT2_DIR / "merges.txt")))
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    enc = gpt2_encoding_offline()
    for story in valid + ["  spaces\t\ttabs\r\n", "naïve café 東京 🙂 ’s 'll 123456"]:
        assert enc.encode_ordinary(story) == reference.encode(story).ids


def test_bytes_to_unicode_is_gpt2s_alphabet():
    mapping = bytes_to_unicode()
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("A")] == "A"


def test_gpt2_encoding_is_cached_and_prefers_tiktoken_online(monkeypatch):
    gpt2_encoding.cache_clear()
    try:
        monkeypatch.setattr(tokenizer_module, "online", lambda host: False)
        offline = gpt2_encoding()
        assert gpt2_encoding() is offline
        gpt2_encoding.cache_clear()
        sentinel = object()
        monkeypatch.setattr(tokenizer_module, "online", lambda host: host == "openaipublic.blob.core.windows.net")
        monkeypatch.setattr(tokenizer_module.tiktoken, "get_encoding", lambda name: sentinel if name == "gpt2" else None)
        assert gpt2_encoding() is sentinel
        gpt2_encoding.cache_clear()

        def refuse(name):
            raise ConnectionError("no route")

        monkeypatch.setattr(tokenizer_module.tiktoken, "get_encoding", refuse)
        assert gpt2_encoding().encode("Hello world") == [15496, 995]  # falls back to the shipped files
    finally:
        gpt2_encoding.cache_clear()


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_gpt2_round_trip_arbitrary_unicode(text):
    enc = gpt2_encoding_offline_cached()
    assert enc.decode(enc.encode_ordinary(text)) == text


_ENC = []


def gpt2_encoding_offline_cached():
    if not _ENC:
        _ENC.append(gpt2_encoding_offline())
    return _ENC[0]


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_fast_pattern_splits_like_gpt2s_original(text):
    assert regex.findall(GPT2_PATTERN, text) == regex.findall(GPT2_PATTERN_ORIGINAL, text)


def test_fast_pattern_on_real_stories(valid):
    for story in valid:
        assert regex.findall(GPT2_PATTERN, story) == regex.findall(GPT2_PATTERN_ORIGINAL, story)
        assert "".join(regex.findall(GPT2_PATTERN, story)) == story


# --- character and word tokenizers ------------------------------------------------------------


def test_char_tokenizer(stories):
    tok = CharTokenizer.train(stories)
    alphabet = sorted(set("".join(stories)))
    assert tok.n_vocab == len(alphabet) + 2
    assert tok.tokens[2:] == alphabet
    text = stories[0]
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode("a" + ENDOFTEXT + "b") == [tok.token_to_id["a"], tok.eot_token, tok.token_to_id["b"]]
    assert tok.encode_ordinary(ENDOFTEXT) == [tok.token_to_id.get(c, tok.unk_token) for c in ENDOFTEXT]
    assert tok.encode("東") == [tok.unk_token]
    assert tok.count_unknown("ab東京") == (2, 4)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_char_round_trip_on_its_alphabet(stories, data):
    tok = CharTokenizer.train(stories)
    text = data.draw(st.text(alphabet=st.sampled_from(tok.tokens[2:])))
    assert tok.decode(tok.encode(text)) == text


def test_word_tokenizer(stories, valid):
    tok = WordTokenizer.train(stories)
    for story in stories[:20]:
        ids = tok.encode(story)
        assert tok.decode(ids) == story  # every piece of a training story is in the vocabulary
        assert len(ids) == len(regex.findall(GPT2_PATTERN, story))
    small = WordTokenizer.train(stories, max_vocab=100)
    assert small.n_vocab == 100
    unknown, total = small.count_unknown(valid[0])
    assert 0 < unknown < total
    assert sum(i == small.unk_token for i in small.encode(valid[0])) == unknown
    # the most frequent pieces are kept: " the" and "." are in, a rare name is not
    assert " the" in small.token_to_id and "." in small.token_to_id


def test_bad_arguments_raise(stories):
    with pytest.raises(ValueError, match="max_vocab"):
        WordTokenizer.train(stories, max_vocab=2)
    with pytest.raises(TypeError, match="text"):
        CharTokenizer.train(stories).encode(b"bytes")
    with pytest.raises(ValueError, match="out of range"):
        CharTokenizer.train(stories).decode([10_000])
    with pytest.raises(ValueError, match="tokens must start"):
        CharTokenizer(["a", "b"])


def test_token_pieces_rebuild_the_text(stories):
    from slmbook.bpe import BPETokenizer
    from slmbook.tokenizer import token_pieces

    text = "Lily saw a 🐚 shell, “wow”!"
    bpe = BPETokenizer.train(stories, vocab_size=400)
    for enc in (gpt2_encoding_offline(), bpe, bpe.to_tiktoken(), CharTokenizer.train(stories + [text])):
        pieces = token_pieces(enc, text)
        assert [i for i, _ in pieces] == enc.encode_ordinary(text)
        assert b"".join(b for _, b in pieces) == text.encode("utf-8")
    # GPT-2 cuts the 4-byte emoji across tokens: some pieces are not whole characters
    assert any(not _decodes(b) for _, b in token_pieces(gpt2_encoding_offline(), "🐚"))


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
