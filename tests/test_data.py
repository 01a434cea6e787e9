"""The shipped TinyStories sample and the hub loader's fallback."""

import pytest

from slmbook import data


def test_validation_sample_is_the_first_1000_official_stories():
    stories = data.load_stories("validation", source="sample", verbose=False)
    assert len(stories) == 1000
    assert stories[0].startswith("Spot. Spot saw the shiny car")
    assert all(data.EOT not in s and s == s.strip("\n") for s in stories)


def test_train_sample_and_limit():
    assert len(data.load_stories("train", source="sample", verbose=False)) == 2216
    assert len(data.load_stories("train", source="sample", limit=10, verbose=False)) == 10


def test_streaming_reader_matches_whole_file_reader(tmp_path):
    path = data.resource_path("tinystories", data.SAMPLE_FILES["validation"])
    assert list(data.iter_story_files([path])) == data.read_story_file(path)


def test_split_stories_strips_separators():
    assert data.split_stories("a b\n<|endoftext|>\nc\n<|endoftext|>\n") == ["a b", "c"]


def test_load_says_where_stories_come_from(capsys):
    data.load_stories("validation", source="sample", limit=2)
    assert "from the sample shipped with slmbook" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "test"}, "split='test' is unknown"),
    ({"source": "web"}, "source='web' is unknown"),
    ({"limit": 0}, "limit=0"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load_stories(**kwargs)


def test_auto_falls_back_to_the_sample_when_the_hub_fails(monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(data, "online", lambda host: True)

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    stories = data.load_stories("validation", source="auto", limit=3)
    assert len(stories) == 3 and "shipped with slmbook" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="source='hub': could not load 'roneneldan/TinyStories'"):
        data.load_stories("validation", source="hub")


def test_hub_rows_become_stories(monkeypatch):
    import datasets

    monkeypatch.setattr(data, "online", lambda host: True)
    calls = []

    def fake_hub(name, split):
        calls.append((name, split))
        return [{"text": "Once upon a time.\n"}, {"text": "\n"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert data.load_stories("train", limit=2, verbose=False) == ["Once upon a time."]
    assert calls == [("roneneldan/TinyStories", "train[:2]")]


def test_licence_notice_ships_with_the_data():
    notice = data.resource_path("NOTICE.md").read_text()
    assert "CDLA-Sharing-1.0" in notice and "MIT License" in notice


def test_benchmark_results_lists_matching_files_sorted_and_none_without_the_folder(tmp_path):
    from slmbook.data import benchmark_results

    for name in ("gpu_b.json", "gpu_a.json", "other.json"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in benchmark_results("gpu_*.json", tmp_path)] == ["gpu_a.json", "gpu_b.json"]
    assert benchmark_results("gpu_*.json", tmp_path / "missing") == []
    assert any(p.name == "reader_model.json" for p in benchmark_results("reader_model.json"))  # the checkout's


def test_command_line_shows_path_flags_by_their_last_part():
    from slmbook.data import command_line

    argv = ["--stories", "/home/someone/data/tinystories", "--steps", "10", "--out", "/tmp/run/", "--smoke"]
    assert command_line("benchmarks/x.py", argv, ("--stories", "--out")) == (
        "python benchmarks/x.py --stories tinystories --steps 10 --out run --smoke")
