"""`python -m slmbook.train` never overwrites what it did not write, and refuses an output it could not
write before it trains (exit code 2, one line naming the path and what is allowed, no traceback)."""

from __future__ import annotations

import json

import pytest
import torch

from slmbook import train_cli as cli
from slmbook.checkpoint import CheckpointError, read_state, save_checkpoint
from slmbook.data import load_stories
from slmbook.dataloader import write_token_file
from slmbook.qwen import QwenModel
from slmbook.tokenizer import CharTokenizer
from slmbook.training import Trainer
from slmbook.training_config import TrainConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    stories = load_stories("validation", source="sample", verbose=False)[:40]
    tokenizer = CharTokenizer.train(stories)
    folder = tmp_path_factory.mktemp("chars")
    write_token_file(stories[:30], tokenizer, folder / "train.bin", progress=False)
    write_token_file(stories[30:], tokenizer, folder / "validation.bin", progress=False)
    return folder


@pytest.fixture
def args(data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine runs a tiny model faster on one thread
    yield ["--config", "tiny", "--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--context", "16",
           "--eval-batches", "1", "--sample-tokens", "0", "--device", "cpu", "--data", str(data), "--no-progress"]
    torch.set_num_threads(threads)


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if the command got as far as building a Trainer."""
    def trainer(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(cli, "Trainer", trainer)


def refused(capsys, argv, *words):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    return err


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hf_like_folder(folder):
    """A model folder someone else wrote: weights and config, a tokenizer, no training_state.json."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"someone's weights")
    (folder / "config.json").write_text('{"model_type": "qwen3"}')
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, args, capsys, no_training):
    path = tmp_path / "results.txt"
    path.write_text("keep me")
    refused(capsys, [*args, "--out", str(path)], repr(str(path)), "is a file", "allowed: a new folder")
    refused(capsys, [*args, "--out", str(path), "--fresh"], "is a file")
    refused(capsys, [*args, "--out", str(path / "run")], "is a file, so no folder can be made inside it")
    assert path.read_text() == "keep me"


def test_an_out_that_is_the_working_directory_is_refused(tmp_path, args, capsys, no_training, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    refused(capsys, [*args, "--out", "."], "--out='.'", "working directory", "sub-folder")


def test_an_out_that_is_someone_elses_folder_is_refused_even_with_fresh(tmp_path, args, capsys, no_training):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    before = snapshot(folder)
    for extra in ([], ["--fresh"]):
        refused(capsys, [*args, "--out", str(folder), *extra], repr(str(folder)), "notes.txt",
                "not a run folder", "training_state.json")
    assert snapshot(folder) == before


def test_weights_without_a_state_file_are_refused_without_fresh(tmp_path, args, capsys, no_training):
    folder = hf_like_folder(tmp_path / "qwen")
    before = snapshot(folder)
    refused(capsys, [*args, "--out", str(folder)], repr(str(folder)), "config.json, model.safetensors",
            "no training_state.json", "--fresh")
    assert snapshot(folder) == before


def test_fresh_replaces_only_the_checkpoint_files_and_says_so(tmp_path, args, capsys):
    folder = hf_like_folder(tmp_path / "qwen")
    assert cli.main([*args, "--out", str(folder), "--fresh"]) == 0
    out = capsys.readouterr().out
    assert f"--fresh: config.json, model.safetensors in {folder} will be replaced" in out and "kept: tokenizer.json" in out
    assert (folder / "tokenizer.json").read_text() == "{}"  # never deleted: we did not write it
    assert read_state(folder)["step"] == 2 and (folder / "model.safetensors").read_bytes() != b"someone's weights"
    # the folder is now a run folder: the same command resumes it, --fresh replaces it and says so
    assert cli.main([*args, "--out", str(folder)]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert cli.main([*args, "--out", str(folder), "--fresh"]) == 0
    out = capsys.readouterr().out
    assert "--fresh: the checkpoint in" in out and "resuming" not in out
    assert read_state(folder)["step"] == 2 and (folder / "tokenizer.json").is_file()


def test_summary_json_into_a_missing_folder_is_written(tmp_path, args):
    summary = tmp_path / "results" / "deep" / "summary.json"
    assert cli.main([*args, "--out", str(tmp_path / "run"), "--summary-json", str(summary)]) == 0
    assert json.loads(summary.read_text())["steps"] == 2


def test_summary_json_paths_that_cannot_be_written_are_refused_before_training(tmp_path, args, capsys, no_training):
    run = str(tmp_path / "run")
    refused(capsys, [*args, "--out", run, "--summary-json", str(tmp_path)], repr(str(tmp_path)), "is a folder",
            "give a file name")
    (tmp_path / "file").write_text("x")
    refused(capsys, [*args, "--out", run, "--summary-json", str(tmp_path / "file" / "s.json")],
            "--summary-json=", "is a file, so no folder can be made inside it")
    refused(capsys, [*args, "--out", run, "--summary-json", run], "is the --out folder")
    assert not (tmp_path / "run").exists()


def test_the_trainer_refuses_a_file_and_resuming_weights_it_did_not_write(tmp_path, data):
    config = TrainConfig(steps=1, warmup_steps=0, batch_size=2, context=16, device="cpu", sample_tokens=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="out=.* is a file"):
        Trainer(config, data / "train.bin", out=tmp_path / "f", progress=False)
    folder = hf_like_folder(tmp_path / "qwen")
    with pytest.raises(CheckpointError, match="holds config.json, model.safetensors but no training_state.json"):
        Trainer(config, data / "train.bin", out=folder, resume=True, progress=False)
    Trainer(config, data / "train.bin", out=folder, resume=False, progress=False)  # asked to start over: allowed


def test_a_run_folder_missing_after_a_killed_swap_is_found_again_not_restarted(tmp_path, args, capsys):
    run = tmp_path / "run"
    assert cli.main([*args, "--out", str(run)]) == 0
    capsys.readouterr()
    state = read_state(run)
    run.rename(tmp_path / ".run.old-999999999-abc")  # a pid no system reaches: that process is gone
    # the command sees the checkpoint again (recovery) instead of taking the missing folder for a new run
    assert cli.main([*args, "--out", str(run)]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert read_state(run)["history"] == state["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_empty_folder_or_a_new_one_is_a_new_run(tmp_path, args, capsys, no_training, monkeypatch):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "a" / "b"):
        assert cli.check_outputs(out) == []
    save_checkpoint(tmp_path / "ckpt", QwenModel(TrainConfig().model))
    assert cli.check_outputs(tmp_path / "ckpt") == []
    assert "will be replaced at the first save" in cli.check_outputs(tmp_path / "ckpt", fresh=True)[0]
