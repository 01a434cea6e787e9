"""Data preparation in the package: a local folder of real TinyStories files -> deduplicated token files
in the data home, validation stories kept out of training, and the hub source failing clearly offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmbook import prepare as prep
from slmbook import train_cli as cli
from slmbook.curation import jaccard, normalize, shingles
from slmbook.data import EOT, SAMPLE_FILES, read_story_file, resource_path
from slmbook.dataloader import read_token_file
from slmbook.tokenizer import CharTokenizer, gpt2_encoding

REPO = Path(__file__).resolve().parent.parent
TRAIN, VALID = (resource_path("tinystories", SAMPLE_FILES[split]) for split in ("train", "validation"))
N_TRAIN_COPIES, N_VALID_COPIES, N_VALID_CUT = 30, 20, 3


def truncated(story: str) -> str:
    """The story without its last sentence: a near-copy (the rest is the same real text)."""
    body = story.rstrip()
    cut = body.rstrip(".!?\"”").rfind(". ")
    return body[: cut + 1]


@pytest.fixture(scope="module")
def stories():
    return read_story_file(TRAIN), read_story_file(VALID)


@pytest.fixture(scope="module")
def near_copies(stories):
    """Validation stories cut short whose exact Jaccard similarity (5-word shingles) to the whole story
    is at least 0.9, well above the 0.8 threshold, so MinHash + LSH must find them."""
    chosen = [s for s in stories[1][500:] if jaccard(shingles(s), shingles(truncated(s))) >= 0.9]
    return [truncated(s) for s in chosen[:N_VALID_CUT]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, stories, near_copies):
    """The shipped files, plus a file repeating some of their stories as other sources do: exact copies
    of training stories, exact copies of validation stories, and validation stories cut short."""
    train, valid = stories
    root = tmp_path_factory.mktemp("stories")
    shutil.copy(TRAIN, root / TRAIN.name)
    shutil.copy(VALID, root / VALID.name)
    repeats = train[100:100 + N_TRAIN_COPIES] + valid[:N_VALID_COPIES] + near_copies
    (root / "repeats.txt").write_text("".join(f"{s}\n{EOT}\n" for s in repeats), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("prepared")
    return prep.prepare("local", folder, out, progress=False), out


def decoded_stories(path: Path) -> list[str]:
    tokens, info = read_token_file(path)
    eot = gpt2_encoding().eot_token
    ends = np.flatnonzero(np.asarray(tokens) == eot)
    assert len(ends) == info.n_stories and ends[-1] == len(tokens) - 1  # one eot after every story
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [gpt2_encoding().decode(tokens[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]


def test_the_shipped_files_hold_distinct_stories(stories):
    """The baseline the counts below rely on: no story repeats inside or across the shipped files."""
    train, valid = stories
    assert len(set(train)) == len(train) == 2216 and len(set(valid)) == len(valid) == 1000
    assert not set(train) & set(valid)


def test_duplicates_and_validation_overlap_are_counted_and_removed(prepared, stories):
    report, _ = prepared
    train, valid = stories
    assert report["stories_read"] == {"train": len(train) + N_TRAIN_COPIES + N_VALID_COPIES + N_VALID_CUT,
                                      "validation": len(valid)}
    assert report["stories_read_per_input"]["repeats.txt"] == N_TRAIN_COPIES + N_VALID_COPIES + N_VALID_CUT
    assert report["exact_duplicates_removed"] == N_TRAIN_COPIES
    assert report["removed"]["in validation"] == N_VALID_COPIES
    assert report["removed"]["near validation"] == N_VALID_CUT
    assert report["validation_overlap_removed"] == N_VALID_COPIES + N_VALID_CUT
    assert report["stories"] == {"train": len(train), "validation": len(valid)}
    assert set(report["seconds"]) == {*prep.STAGES, "total"}
    assert sum(report["seconds"][s] for s in prep.STAGES) == pytest.approx(report["seconds"]["total"], abs=0.03)
    assert "/" not in "".join(report["request"]["files"])  # inputs named by file name and size, no machine path


def test_validation_stories_never_land_in_train_bin(prepared, stories, near_copies):
    _, out = prepared
    train, valid = stories
    in_train = decoded_stories(out / "train.bin")
    in_validation = decoded_stories(out / "validation.bin")
    # what was written is each story normalized (curation.normalize), tokenized by GPT-2 and decoded back
    assert sorted(in_train) == sorted(normalize(s)[0] for s in train)
    assert in_validation == [normalize(s)[0] for s in valid]
    assert not set(in_train) & set(in_validation)
    assert not {normalize(s)[0] for s in near_copies} & set(in_train)  # the near-copies of validation stories are out too


def test_token_counts_match_gpt2_on_the_stories(prepared, stories):
    report, out = prepared
    encoding = gpt2_encoding()
    train, valid = stories
    expected = sum(len(encoding.encode_ordinary(normalize(s)[0])) + 1 for s in valid)
    assert report["tokens"]["validation"] == expected == read_token_file(out / "validation.bin")[1].n_tokens


def test_data_home_is_slmbook_home_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMBOOK_HOME", str(tmp_path / "home"))
    assert prep.data_home() == tmp_path / "home"
    assert prep.data_dir("hub") == tmp_path / "home" / "tinystories" / "hub-gpt2"
    monkeypatch.delenv("SLMBOOK_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert prep.data_home() == tmp_path / "cache" / "slmbook"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert prep.data_home() == tmp_path / "user" / ".cache" / "slmbook"


def test_ensure_data_prepares_once_and_again_when_the_inputs_change(monkeypatch, tmp_path, folder):
    monkeypatch.setenv("SLMBOOK_HOME", str(tmp_path))
    local = tmp_path / "stories"
    shutil.copytree(folder, local)
    first = prep.ensure_data("local", local, near_threshold=None, progress=False)
    assert first == prep.data_dir("local") and prep.find_prepared() == first
    calls = []
    real = prep.prepare
    monkeypatch.setattr(prep, "prepare", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert prep.ensure_data("local", local, near_threshold=None, progress=False) == first and calls == []
    (local / "repeats.txt").unlink()  # other inputs: prepared again
    prep.ensure_data("local", local, near_threshold=None, progress=False)
    assert len(calls) == 1 and prep.read_report(first)["stories_read"]["train"] == 2216
    assert cli.default_data(progress=False) == first  # `python -m slmbook.train` finds it in the data home


def test_train_falls_back_to_the_shipped_sample_in_the_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMBOOK_HOME", str(tmp_path))
    assert prep.find_prepared() is None
    folder = cli.default_data(progress=False)
    assert folder == tmp_path / "tinystories" / "sample-gpt2" and (folder / "train.bin").is_file()


def test_the_hub_source_fails_clearly_offline(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"cannot be reached.*source='local'"):
        prep.prepare("hub", out=tmp_path / "hub", progress=False)
    assert not (tmp_path / "hub").exists()  # nothing half-written
    assert prep.main(["--source", "hub", "--out", str(tmp_path / "hub"), "--no-progress"]) == 2
    assert "cannot be reached" in capsys.readouterr().err
    with pytest.raises(ValueError, match="near_threshold=0.8 with source='hub'"):
        prep.prepare("hub", near_threshold=0.8)


def test_the_hub_source_streams_deduplicates_and_keeps_validation_out(monkeypatch, tmp_path, stories):
    """The hub code path with `datasets` replaced by a stand-in serving the shipped stories as rows
    (the hub is unreachable here): streamed, deduplicated, validation split kept out of training."""
    import importlib.machinery
    import types

    train, valid = stories
    rows = {"train": train[:300] + train[:7] + valid[:5] + ["\n"], "validation": valid[:100]}
    asked = []
    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)

    def load_dataset(name, split, streaming=False):
        asked.append((name, split, streaming))
        return iter([{"text": text} for text in rows[split]])

    def load_dataset_builder(name):
        raise ConnectionError("no metadata offline")

    fake.load_dataset, fake.load_dataset_builder = load_dataset, load_dataset_builder
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr("slmbook.hub.online", lambda host="huggingface.co", **kwargs: True)
    report = prep.prepare("hub", out=tmp_path / "hub", progress=False)
    assert sorted(asked) == [("roneneldan/TinyStories", "train", True), ("roneneldan/TinyStories", "validation", True)]
    assert report["stories_read"] == {"train": 312, "validation": 100}  # the empty row is skipped when read
    assert (report["exact_duplicates_removed"], report["validation_overlap_removed"]) == (7, 5)
    assert report["near_threshold"] is None and report["stories"] == {"train": 300, "validation": 100}
    assert sorted(decoded_stories(tmp_path / "hub" / "train.bin")) == sorted(normalize(s)[0] for s in train[:300])


@pytest.mark.parametrize("call, words", [
    (lambda: prep.data_dir("web"), ["source='web' is unknown", "'local', 'hub'"]),
    (lambda: prep.data_dir("local", "llama"), ["tokenizer='llama' is unknown", "'gpt2'"]),
    (lambda: prep.local_files("/nonexistent/stories"), ["stories_dir='/nonexistent/stories' is not a folder"]),
    (lambda: prep.prepare("local", near_threshold=1.5), ["near_threshold=1.5", "(0, 1]"]),
    (lambda: prep.prepare("local", limit=0), ["limit=0", "positive"]),
])
def test_bad_input_is_refused_naming_parameter_value_and_allowed(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_a_tokenizer_is_one_entry_of_the_registry(monkeypatch, tmp_path, stories):
    train, valid = stories
    chars = CharTokenizer.train(train + valid)
    monkeypatch.setitem(prep.TOKENIZERS, "chars", lambda: chars)
    monkeypatch.setenv("SLMBOOK_HOME", str(tmp_path))
    report = prep.prepare("local", TRAIN.parent, tokenizer="chars", near_threshold=None, limit=200, progress=False)
    tokens, info = read_token_file(prep.data_dir("local", "chars") / "train.bin")
    assert report["tokenizer"] == "chars" and info.n_vocab == chars.n_vocab and report["stories"]["train"] == 200
    first = chars.decode(tokens[: list(tokens).index(chars.eot_token)].tolist())
    assert first == normalize(train[0])[0]


def test_the_command_line_and_the_benchmarks_wrapper(tmp_path, capsys, folder):
    assert prep.main(["--stories-dir", str(folder), "--out", str(tmp_path / "out"), "--near", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"removed {N_TRAIN_COPIES} exact duplicates" in out and f"{N_VALID_COPIES} training stories" in out
    assert prep.is_prepared(tmp_path / "out")
    wrapper = subprocess.run([sys.executable, str(REPO / "benchmarks" / "prepare_tinystories.py"), "--help"],
                             capture_output=True, text=True, timeout=120)
    assert wrapper.returncode == 0 and "python -m slmbook.prepare" in wrapper.stdout
