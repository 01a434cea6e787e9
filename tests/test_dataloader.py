"""Token files and batches, checked against tiktoken's own encoding and plain slicing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slmbook.curation import normalize
from slmbook.dataloader import (
    TokenBatches,
    in_validation,
    iter_stories,
    prepare_token_files,
    read_token_file,
    split_by_story,
    token_dtype,
    write_token_file,
)
from slmbook.tokenizer import CharTokenizer, gpt2_encoding


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_encoding()


def reference_ids(encoding, stories):
    ids = []
    for s in stories:
        ids += encoding.encode_ordinary(s) + [encoding.eot_token]
    return ids


def test_token_file_holds_each_story_then_eot(tmp_path, gpt2, valid):
    stories = valid[:50]
    info = write_token_file(stories, gpt2, tmp_path / "v.bin", chunk_stories=7, progress=False)
    tokens, read_info = read_token_file(tmp_path / "v.bin")
    assert read_info == info
    assert tokens.dtype == np.uint16 and info.dtype == "uint16"
    assert tokens.tolist() == reference_ids(gpt2, stories)
    assert info.n_stories == 50 and info.n_tokens == len(tokens)
    assert info.n_bytes == sum(len(s.encode("utf-8")) for s in stories)
    assert (tokens == gpt2.eot_token).sum() == 50


def test_token_file_with_a_python_tokenizer(tmp_path, valid):
    char = CharTokenizer.train(valid[:100])
    write_token_file(valid[:10], char, tmp_path / "c.bin", progress=False)
    tokens, info = read_token_file(tmp_path / "c.bin")
    assert tokens.tolist() == reference_ids(char, valid[:10])
    assert info.encoding == "char" and info.eot_token == char.eot_token


def test_dtype_grows_with_the_vocabulary():
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(151936) == np.uint32


def test_writing_streams_the_stories(tmp_path, gpt2, valid):
    """The writer must not pull more than one chunk of stories ahead of what it has encoded."""
    pulled = []

    def stories():
        for s in valid[:40]:
            pulled.append(s)
            yield s

    class Watching:
        name, eot_token, n_vocab = "gpt2", gpt2.eot_token, gpt2.n_vocab

        def encode_ordinary(self, text):
            assert len(pulled) <= ((len(seen) // 8) + 1) * 8
            seen.append(text)
            return gpt2.encode_ordinary(text)

    seen: list[str] = []
    write_token_file(stories(), Watching(), tmp_path / "s.bin", chunk_stories=8, progress=False)
    assert len(seen) == 40


def test_iter_stories_reads_files_and_strings(tmp_path, valid):
    f = tmp_path / "stories.txt"
    f.write_text("".join(s + "\n<|endoftext|>\n" for s in valid[:3]), encoding="utf-8")
    assert list(iter_stories([f, "a story"])) == valid[:3] + ["a story"]
    with pytest.raises(TypeError, match="sources"):
        list(iter_stories("one story"))


def test_hash_split_is_order_independent_and_near_the_fraction(train):
    a_train, a_val = split_by_story(train, 0.1, seed=0)
    b_train, b_val = split_by_story(train[::-1], 0.1, seed=0)
    assert set(a_val) == set(b_val) and set(a_train) == set(b_train)
    assert not set(a_val) & set(a_train)
    n = len(train)
    assert abs(len(a_val) - 0.1 * n) < 4 * np.sqrt(0.1 * 0.9 * n)
    # whitespace-only variants of a story fall on the same side
    assert in_validation(a_val[0], 0.1) and in_validation(a_val[0].replace(" ", "  "), 0.1)


def decoded_stories(encoding, path: Path) -> list[str]:
    tokens, _ = read_token_file(path)
    text = encoding.decode(tokens.tolist())
    return text.split("<|endoftext|>")[:-1]


def test_prepare_keeps_validation_out_of_training(tmp_path, gpt2, valid, train):
    damaged = [s for s in valid if "â€" in s][:3]  # real mojibake
    val = valid[:57] + damaged
    # training data that contains copies of validation stories: as is, with changed whitespace,
    # and the repaired text of a damaged one (normalization makes them equal)
    train_sources = train[:80] + [val[5], val[9].replace("\n", "\n\n"), normalize(damaged[0])[0]] + train[:3]
    result = prepare_token_files(train_sources, gpt2, tmp_path, validation=val, progress=False)
    train_out = decoded_stories(gpt2, tmp_path / "train.bin")
    val_out = decoded_stories(gpt2, tmp_path / "validation.bin")
    assert val_out == [normalize(s)[0] for s in val]
    assert train_out == train[:80]
    assert result["removed"] == {"in validation": 3, "exact duplicates": 3}
    assert result["train"].n_stories == 80 and result["validation"].n_stories == 60


def test_prepare_from_files_with_hash_split_and_near_dedup(tmp_path, gpt2, valid):
    f = tmp_path / "stories.txt"
    stories = valid[200:300]
    # a near-copy: the same story with its first sentence dropped
    near_copy = stories[0].split(". ", 1)[1]
    f.write_text("".join(s + "\n<|endoftext|>\n" for s in stories + [near_copy]), encoding="utf-8")
    result = prepare_token_files([f], gpt2, tmp_path / "out", val_fraction=0.2, near_threshold=0.7, progress=False)
    train_out = decoded_stories(gpt2, tmp_path / "out" / "train.bin")
    val_out = decoded_stories(gpt2, tmp_path / "out" / "validation.bin")
    assert sum(result["removed"].values()) == 1  # the near-copy, in one way or the other
    assert len(train_out) + len(val_out) == 100
    assert sorted(train_out + val_out) == sorted(stories)
    assert all(in_validation(s, 0.2) for s in val_out) and not any(in_validation(s, 0.2) for s in train_out)


# --- batches ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_file(tmp_path_factory, gpt2, valid):
    path = tmp_path_factory.mktemp("tokens") / "valid.bin"
    write_token_file(valid[:100], gpt2, path, progress=False)
    return path


def test_batches_are_shifted_windows(token_file):
    tokens, _ = read_token_file(token_file)
    T = 32
    batches = TokenBatches(token_file, batch_size=4, context_length=T, seed=3)
    order = batches.order(0)
    x, y = next(iter(batches))
    assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
    for row, w in enumerate(order[:4]):
        assert x[row].tolist() == tokens[w * T : w * T + T].tolist()
        assert y[row].tolist() == tokens[w * T + 1 : w * T + T + 1].tolist()


def test_an_epoch_visits_every_window_once_in_a_seeded_order(token_file):
    tokens, _ = read_token_file(token_file)
    T, B = 16, 8
    n_windows = (len(tokens) - 1) // T
    a = TokenBatches(token_file, B, T, seed=1)
    order = a.order(0)
    assert sorted(order.tolist()) == list(range(n_windows))  # a permutation of all windows
    rows = torch.cat([x for x, _ in a])  # epoch 0
    assert len(a) == n_windows // B and rows.shape == (len(a) * B, T)
    expected = np.stack([tokens[w * T : w * T + T] for w in order[: len(a) * B]])
    assert np.array_equal(rows.numpy(), expected)
    b = TokenBatches(token_file, B, T, seed=1)
    assert np.array_equal(order, b.order(0))
    assert not np.array_equal(order, a.order(1))
    assert not np.array_equal(order, TokenBatches(token_file, B, T, seed=2).order(0))
    assert a.epoch == 1  # the next iteration uses the next epoch's order
    a.set_epoch(0)
    assert torch.equal(torch.cat([x for x, _ in a]), rows)


def test_ranks_get_disjoint_equal_parts(token_file):
    T, B, world = 16, 2, 3
    parts = [TokenBatches(token_file, B, T, rank=r, world_size=world, seed=0) for r in range(world)]
    assert len({len(p) for p in parts}) == 1
    windows = [set(p.windows.tolist()) for p in parts]
    assert not (windows[0] & windows[1]) and not (windows[1] & windows[2]) and not (windows[0] & windows[2])
    tokens, _ = read_token_file(token_file)
    n_windows = (len(tokens) - 1) // T
    assert sum(len(w) for w in windows) == n_windows - n_windows % world
    # each rank's batches come from its own windows only
    for r, p in enumerate(parts):
        for x, _ in p:
            for row in x:
                hits = [w for w in windows[r] if tokens[w * T : w * T + T].tolist() == row.tolist()]
                assert hits


def test_sequential_batches_for_evaluation(token_file):
    tokens, _ = read_token_file(token_file)
    T = 64
    batches = TokenBatches(token_file, 5, T, shuffle=False, drop_last=False)
    x = torch.cat([x for x, _ in batches])
    n_windows = (len(tokens) - 1) // T
    assert x.shape[0] == n_windows
    assert x.reshape(-1).tolist() == tokens[: n_windows * T].tolist()


def test_bad_arguments_raise(token_file, tmp_path, gpt2):
    with pytest.raises(ValueError, match="rank"):
        TokenBatches(token_file, 2, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="context_length"):
        TokenBatches(token_file, 2, 0)
    with pytest.raises(ValueError, match="windows"):
        TokenBatches(token_file, 2, 10**7)
    with pytest.raises(FileNotFoundError, match="token file"):
        read_token_file(tmp_path / "missing.bin")
    with pytest.raises(TypeError, match="stories"):
        write_token_file("one story", gpt2, tmp_path / "x.bin", progress=False)
    with pytest.raises(TypeError, match="encoding"):
        write_token_file(["a"], object(), tmp_path / "x.bin", progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        in_validation("a", 1.5)
