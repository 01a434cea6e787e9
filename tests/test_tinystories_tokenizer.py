"""The shipped TinyStories tokenizer: offline, lossless on every shipped story, the same ids as the
pure-Python BPE, trained without the validation stories; and its rebuild command."""

from __future__ import annotations

import json
import socket

import pytest
import tiktoken

from slmbook import tinystories_tokenizer as tt
from slmbook.bpe import BPETokenizer
from slmbook.data import SAMPLE_FILES, read_story_file, resource_path
from slmbook.tokenizer import ENDOFTEXT


@pytest.fixture(scope="module")
def shipped_stories():
    return [s for name in SAMPLE_FILES.values() for s in read_story_file(resource_path("tinystories", name))]


def test_loads_offline_as_a_tiktoken_encoding(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tt.tinystories_tokenizer.cache_clear()
    tt.tinystories_encoding.cache_clear()
    encoding = tt.tinystories_encoding()
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == tt.TOKENIZER_NAME == "tinystories-4k"
    assert encoding.n_vocab == tt.VOCAB_SIZE == 4096
    assert encoding.eot_token == 4095 and encoding.special_tokens_set == {ENDOFTEXT}
    ids = encoding.encode(f"The end.{ENDOFTEXT}Once", allowed_special="all")
    assert ids.count(4095) == 1 and encoding.decode(ids) == f"The end.{ENDOFTEXT}Once"
    assert encoding.encode_ordinary(ENDOFTEXT).count(4095) == 0  # as plain text it is spelled, not special


def test_round_trips_every_shipped_story_exactly(shipped_stories):
    encoding = tt.tinystories_encoding()
    assert len(shipped_stories) == 3216
    for story, ids in zip(shipped_stories, encoding.encode_ordinary_batch(shipped_stories), strict=True):
        assert max(ids) < encoding.n_vocab - 1  # no id of the special token inside a story
        assert encoding.decode(ids) == story


def test_same_ids_as_the_pure_python_encoder(shipped_stories):
    fast, slow = tt.tinystories_encoding(), tt.tinystories_tokenizer()
    assert isinstance(slow, BPETokenizer) and slow.n_vocab == fast.n_vocab
    odd = ["Zorblax 🐚 counted 1234567 shells!", "Ã©tÃ© â€œhiâ€\u009d", "  two  spaces\n\n\nand tabs\t\t",
           "日本語"]
    for text in shipped_stories[::40] + odd:
        assert fast.encode_ordinary(text) == slow.encode_ordinary(text)
        assert slow.decode(slow.encode_ordinary(text)) == text


def test_the_shipped_file_says_what_it_was_trained_on():
    data = json.loads(tt.tokenizer_path().read_text(encoding="utf-8"))
    provenance = data["provenance"]
    assert data["format"] == "slmbook-bpe-v1" and len(data["merges"]) == 4096 - 256 - 1
    assert provenance["validation_file"] == SAMPLE_FILES["validation"]
    assert SAMPLE_FILES["validation"] not in provenance["files"] and SAMPLE_FILES["train"] in provenance["files"]
    assert provenance["validation_stories_kept_out"] == 1000
    assert provenance["stories"] > 20_000
    assert provenance["command"].startswith("python -m slmbook.tinystories_tokenizer")
    assert "/" not in "".join(provenance["files"])  # file names, not this machine's paths


def test_training_stories_dedup_and_keep_validation_out(tmp_path):
    validation = read_story_file(resource_path("tinystories", SAMPLE_FILES["validation"]))
    one, two = "Tom had a red ball.\nHe liked it.", "Sue ran to the park."
    text = "".join(f"{s}\n{ENDOFTEXT}\n" for s in [one, two, "Tom had a red   ball.\nHe liked it.", validation[3]])
    (tmp_path / "stories.txt").write_text(text, encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a story file")
    stories, report = tt.training_stories(tmp_path)
    assert stories == [one, two]
    assert report["removed"] == {"exact duplicates": 1, "in validation": 1}
    assert report["files"] == ["stories.txt"] and report["validation_file"] == SAMPLE_FILES["validation"]
    with pytest.raises(ValueError, match="is not a folder"):
        tt.training_stories(tmp_path / "missing")


def test_rebuild_command_writes_a_loadable_tokenizer(tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert tt.main(["--out", str(out), "--vocab-size", "300"]) == 0
    tokenizer = BPETokenizer.load(out)
    assert tokenizer.n_vocab == 300 and tokenizer.name == "tinystories-300"
    provenance = json.loads(out.read_text(encoding="utf-8"))["provenance"]
    assert provenance["files"] == [SAMPLE_FILES["train"]] and provenance["stories"] == 2216
    assert "trained on 2,216 stories" in capsys.readouterr().out
    assert tt.main(["--out", str(out), "--source", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
