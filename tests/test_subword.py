"""WordPiece, Unigram and SentencePiece's ▁ (slmbook.subword), checked against Hugging Face `tokenizers`
given the same vocabulary and scores; and the chapter-6 helpers for numbers and other languages."""

from __future__ import annotations

import math

import pytest
from tokenizers import models, pre_tokenizers

from slmbook import subword as sw
from slmbook.data import load_stories
from slmbook.tokenizer import chunk_lengths, gpt2_encoding, udhr_article1


@pytest.fixture(scope="module")
def train():
    return load_stories("train", source="sample", verbose=False)[:150]


@pytest.fixture(scope="module")
def valid():
    return load_stories("validation", source="sample", verbose=False)[:60]


def test_metaspace_is_the_tokenizers_metaspace(valid):
    reference = pre_tokenizers.Metaspace(replacement=sw.SPACE, prepend_scheme="always", split=True)
    for text in valid + ["  two  spaces", "日本語のテキスト", " leading", "end "]:
        assert sw.metaspace(text) == [piece for piece, _ in reference.pre_tokenize_str(text)]
    assert "".join(sw.metaspace("Once upon a time")).replace(sw.SPACE, " ")[1:] == "Once upon a time"


def test_bert_words_is_the_bert_pre_tokenizer(valid):
    reference = pre_tokenizers.BertPreTokenizer()
    for text in valid + ["Zorblax's 3-legged dog!!", "“Mum,” she said…"]:
        assert sw.bert_words(text) == [piece for piece, _ in reference.pre_tokenize_str(text)]


def test_wordpiece_greedy_on_a_hand_example():
    vocab = {"[UNK]", "un", "##aff", "##able", "u", "##n", "##a", "##f", "##b", "##l", "##e"}
    assert sw.wordpiece_encode("unaffable", vocab) == ["un", "##aff", "##able"]
    assert sw.wordpiece_encode("unx", vocab) == ["[UNK]"]  # one unknown piece makes the whole word unknown
    assert sw.wordpiece_encode("a" * 101, vocab | {"a"}) == ["[UNK]"]


def test_wordpiece_score_prefers_pairs_whose_parts_stay_together():
    # '##s' + '##e' is the most frequent pair (10 times), but both parts occur everywhere: score
    # 10 / (20 x 15); 'q' + '##u' occurs once, and neither part ever occurs without the other: score 1
    counts = {"quiz": 1, "uses": 5, "eses": 5, "sea": 5}
    vocab = sw.train_wordpiece(counts, vocab_size=1 + 10 + 1)  # [UNK], the 10 start/inside characters, one merge
    assert vocab[-1] == "qu"
    assert sw.train_wordpiece(counts, vocab_size=1 + 10 + 3)[-3:] == ["qu", "qui", "quiz"]


def test_wordpiece_encoding_equals_tokenizers(train, valid):
    vocab = sw.train_wordpiece(sw.word_counts(train, sw.bert_words), vocab_size=600)
    assert len(vocab) == 600 and vocab[0] == sw.UNK
    ids = {piece: i for i, piece in enumerate(vocab)}
    reference = models.WordPiece(ids, unk_token=sw.UNK, max_input_chars_per_word=100)
    words = list(sw.word_counts(valid, sw.bert_words))
    assert len(words) > 500
    for word in words:
        assert sw.wordpiece_encode(word, ids) == [t.value for t in reference.tokenize(word)], word


def test_viterbi_on_a_hand_example():
    log_probs = {"a": math.log(0.3), "b": math.log(0.3), "ab": math.log(0.2), "ba": math.log(0.05)}
    # 'abab': ab|ab = 2 ln 0.2 = -3.22 beats a|b|a|b = 4 ln 0.3 = -4.82 and a|ba|b = -5.40
    pieces, score = sw.viterbi("abab", log_probs)
    assert pieces == ["ab", "ab"] and score == pytest.approx(2 * math.log(0.2))
    assert sw.viterbi("axxb", log_probs)[0] == ["a", "xx", "b"]  # unknown characters fused into one piece


def test_unigram_training_raises_likelihood_then_prunes(train):
    counts = sw.word_counts(map(sw.sentencepiece_text, train))
    log_probs, history = sw.train_unigram(counts, vocab_size=400)
    assert len(log_probs) <= 400
    assert math.isclose(sum(map(math.exp, log_probs.values())), 1.0, rel_tol=1e-9)
    assert all(h["log_likelihood_per_word"][1] > h["log_likelihood_per_word"][0] for h in history)  # EM helps
    assert [h["pieces"] for h in history] == sorted((h["pieces"] for h in history), reverse=True)
    assert {c for word in counts for c in word} <= set(log_probs)  # every character kept
    assert max(log_probs, key=log_probs.get) in {".", "▁the", "▁a", "▁and", ","}


def test_viterbi_equals_tokenizers_unigram(train, valid):
    log_probs, _ = sw.train_unigram(sw.word_counts(map(sw.sentencepiece_text, train)), vocab_size=400)
    pieces = ["<unk>", *log_probs]
    reference = models.Unigram([(p, 0.0 if p == "<unk>" else log_probs[p]) for p in pieces], unk_id=0,
                               byte_fallback=False)
    words = list(sw.word_counts(map(sw.sentencepiece_text, valid))) + ["▁Zorblax🐚", "▁日本"]
    for word in words:
        assert sw.viterbi(word, log_probs)[0] == [t.value for t in reference.tokenize(word)], word


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="vocab_size=1"):
        sw.train_wordpiece({"ab": 1}, vocab_size=1)
    with pytest.raises(ValueError, match="vocab_size=2: must be at least 3"):
        sw.train_wordpiece({"ab": 1}, vocab_size=2)
    with pytest.raises(ValueError, match="shrink=1.5"):
        sw.train_unigram({"ab": 1}, vocab_size=10, shrink=1.5)
    with pytest.raises(ValueError, match="word_counts must be a non-empty mapping"):
        sw.train_unigram({}, vocab_size=10)
    with pytest.raises(TypeError, match="text must be a str"):
        sw.metaspace(b"bytes")
    with pytest.raises(ValueError, match="log_probs must be a non-empty"):
        sw.viterbi("a", {})


def test_chunk_lengths_and_udhr():
    gpt2 = gpt2_encoding()
    assert chunk_lengths(gpt2, "1234") == (2, 2) and sum(chunk_lengths(gpt2, "5678")) == 4
    texts = udhr_article1()
    assert {"English", "French", "Chinese", "Arabic", "Russian", "Spanish"} <= set(texts)
    assert texts["English"].startswith("All human beings are born free and equal in dignity and rights.")
    assert all("\n" not in t for t in texts.values())
