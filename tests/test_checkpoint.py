"""Checkpoints: transformers loads them, a killed run resumes bit for bit, damage is refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from slmbook import checkpoint
from slmbook.checkpoint import CheckpointError, atomic_write, find_trained, load_model, save_checkpoint
from slmbook.config import QwenConfig
from slmbook.data import load_stories
from slmbook.dataloader import write_token_file
from slmbook.qwen import QwenModel
from slmbook.tokenizer import CharTokenizer
from slmbook.training import Trainer
from slmbook.training_config import TrainConfig

SMALL = QwenConfig(vocab_size=128, context_length=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)
RUN = TrainConfig(model=SMALL, steps=6, batch_size=4, context=16, lr=3e-3, warmup_steps=2, log_interval=1,
                  eval_interval=3, eval_batches=1, sample_tokens=0, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    stories = load_stories("validation", source="sample", verbose=False)[:120]
    tokenizer = CharTokenizer.train(stories)
    folder = tmp_path_factory.mktemp("chars")
    write_token_file(stories[:100], tokenizer, folder / "train.bin", progress=False)
    write_token_file(stories[100:], tokenizer, folder / "validation.bin", progress=False)
    return folder / "train.bin", folder / "validation.bin"


def random_model(config=SMALL, seed=0):
    torch.manual_seed(seed)
    model = QwenModel(config)
    with torch.no_grad():  # every weight at a scale where a mapping error cannot hide
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_loads_the_checkpoint_and_gives_the_same_logits(tmp_path, tied):
    from transformers import Qwen3ForCausalLM

    model = random_model(SMALL.replace(tie_embeddings=tied)).eval()
    save_checkpoint(tmp_path, model, step=7)
    hf = Qwen3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(ids).logits, model(ids)
    assert expected.abs().max() > 1.0
    assert (got - expected).abs().max().item() <= 1e-5
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tied
    again = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids), got)


def test_a_mixture_of_experts_checkpoint_is_a_qwen3_moe_folder_for_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from slmbook.pretrained import from_pretrained

    model = random_model(SMALL.replace(n_experts=4, n_experts_per_token=2, moe_hidden_dim=16)).eval()
    save_checkpoint(tmp_path, model)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["architectures"] == ["Qwen3MoeForCausalLM"]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == "Qwen3MoeForCausalLM"
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(ids).logits, model(ids)
        assert (got - expected).abs().max().item() <= 1e-5
        assert torch.equal(from_pretrained(tmp_path, attn_impl="sdpa").eval()(ids), got)


def test_a_model_transformers_cannot_build_gets_a_config_that_says_so(tmp_path):
    model = random_model(SMALL.replace(n_experts=4, n_experts_per_token=2, moe_hidden_dim=16, n_shared_experts=1))
    save_checkpoint(tmp_path, model)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "slmbook_qwen" and config["architectures"] == []
    assert "n_shared_experts" in config["transformers_equivalent"]
    assert QwenConfig.from_dict(config["slmbook_config"]) == model.config
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(ids), model.eval()(ids))


def test_resumed_run_gives_bitwise_the_same_losses_as_an_uninterrupted_one(tmp_path, data):
    whole = Trainer(RUN, *data, out=tmp_path / "whole", progress=False)
    expected = whole.run()
    first = Trainer(RUN, *data, out=tmp_path / "split", progress=False)
    first.run(3)
    first.save(tmp_path / "split")
    del first  # the process that trained steps 1-3 is gone
    second = Trainer(RUN, *data, out=tmp_path / "split", resume=True, progress=False)
    assert second.step == 3
    got = second.run()
    assert [r["loss"] for r in got.train] == [r["loss"] for r in expected.train]  # bit for bit
    assert [r["val_loss"] for r in got.eval] == [r["val_loss"] for r in expected.eval]
    for a, b in zip(second.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_state_round_trips(tmp_path, data):
    t = Trainer(RUN, *data, out=tmp_path, progress=False)
    t.run(2)
    t.save(tmp_path)
    fresh = Trainer(RUN, *data, out=tmp_path, resume=True, progress=False)
    a, b = t.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for key in a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][key][name], b["state"][key][name])


# --- damage and mismatch ------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path, data):
    t = Trainer(RUN, *data, progress=False)
    t.run(1)
    t.save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_a_changed_weight_file_is_refused_as_corrupt(saved):
    path = saved / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt or mixed: model.safetensors does not match the SHA-256"):
        load_model(saved)


def test_a_truncated_state_file_or_a_missing_file_is_a_clear_error(saved):
    (saved / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete: optimizer.pt is missing"):
        checkpoint.read_state(saved)
    (saved / "training_state.json").write_text('{"format": "slmbook-checkp')
    with pytest.raises(CheckpointError, match="corrupt: not valid JSON"):
        checkpoint.read_state(saved)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.read_state(saved / "nope")


def test_weights_for_another_shape_are_refused_naming_the_fields(saved):
    with pytest.raises(CheckpointError, match="dim=32 in the checkpoint but 48 in the model"):
        checkpoint.load_weights(QwenModel(SMALL.replace(dim=48)), saved)


def test_resuming_with_other_settings_is_refused_naming_them(saved, data):
    with pytest.raises(CheckpointError, match=r"lr=0.003 there but 0.001 here"):
        Trainer(RUN.replace(lr=1e-3), *data, out=saved, resume=True, progress=False)
    # speed switches may change between the run and its resumption
    Trainer(RUN.replace(log_interval=2), *data, out=saved, resume=True, progress=False)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left behind


def test_find_trained_finds_a_verified_checkpoint_or_none(tmp_path, saved):
    assert find_trained("book", root=tmp_path) is None
    assert find_trained("ckpt", root=tmp_path) == saved
    (saved / "config.json").write_text("{}")
    with pytest.warns(UserWarning, match="ignoring"):
        assert find_trained("ckpt", root=tmp_path) is None
    with pytest.raises(ValueError, match="name='a/b'"):
        find_trained("a/b", root=tmp_path)


def test_save_best_keeps_the_checkpoint_of_the_lowest_validation_loss(tmp_path, data):
    # a far too high constant learning rate: the validation loss falls, then jumps at the last step
    config = RUN.replace(steps=3, eval_interval=1, save_best=True, lr=0.5, warmup_steps=0, min_lr_ratio=1.0)
    t = Trainer(config, *data, out=tmp_path, progress=False)
    history = t.run()
    best = min(history.eval, key=lambda r: r["val_loss"])
    assert best["step"] < 3 and history.eval[-1]["val_loss"] > best["val_loss"] + 1
    assert json.loads((tmp_path / "training_state.json").read_text())["step"] == best["step"]
    model = load_model(tmp_path)
    t.model.load_state_dict(model.state_dict())
    assert t.evaluate()["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)


# --- a checkpoint is replaced as one unit ----------------------------------------------------------


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_save_that_cannot_serialise_extra_fails_before_touching_the_previous_checkpoint(saved):
    before = folder_bytes(saved)
    with pytest.raises(TypeError, match="object is not JSON-serialisable"):
        save_checkpoint(saved, random_model(), step=9, extra={"x": object()})
    assert folder_bytes(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]  # no temporary left behind
    assert checkpoint.read_state(saved)["step"] == 1


@pytest.mark.parametrize("stage", ["temp", "writing model.safetensors", "writing optimizer.pt", "written"])
def test_a_save_failing_half_way_leaves_the_previous_checkpoint_and_no_temporary(saved, stage, monkeypatch):
    before = folder_bytes(saved)

    def fail(name):
        if name == stage:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "stage_hook", fail)
    optimizer = torch.optim.AdamW(random_model().parameters())
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(saved, random_model(seed=3), optimizer, step=9)
    assert folder_bytes(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]
    load_model(saved)


def test_a_failure_between_the_two_renames_puts_the_previous_checkpoint_back(saved, monkeypatch):
    before = folder_bytes(saved)
    monkeypatch.setattr(checkpoint, "USE_RENAME_EXCHANGE", False)
    monkeypatch.setattr(checkpoint, "stage_hook", lambda name: name == "moved old" and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_checkpoint(saved, random_model(seed=3), step=9)
    assert folder_bytes(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("exchange", [True, False])
def test_a_save_replaces_the_folder_and_keeps_files_it_did_not_write(tmp_path, exchange, monkeypatch):
    monkeypatch.setattr(checkpoint, "USE_RENAME_EXCHANGE", exchange)
    folder = tmp_path / "run"
    save_checkpoint(folder, random_model(), torch.optim.AdamW(random_model().parameters()), step=1)
    (folder / "README.md").write_text("my notes")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text("{}")
    (folder / ".model.safetensors.abc123.tmp").write_bytes(b"left by an older slmbook's killed save")
    save_checkpoint(folder, random_model(seed=2), step=2)  # no optimizer this time
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                         "tokenizer", "training_state.json"]
    assert (folder / "README.md").read_text() == "my notes" and (folder / "tokenizer" / "vocab.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert checkpoint.read_state(folder)["step"] == 2
    with torch.no_grad():
        ids = torch.randint(0, 128, (1, 8))
        assert torch.equal(load_model(folder)(ids), random_model(seed=2).eval()(ids))


def test_a_linked_run_folder_is_replaced_where_it_lives(tmp_path):
    real = tmp_path / "disk" / "run"
    save_checkpoint(real, random_model(), step=1)
    (tmp_path / "runs").mkdir()
    link = tmp_path / "runs" / "run"
    link.symlink_to(real, target_is_directory=True)
    save_checkpoint(link, random_model(seed=2), step=2)
    assert link.is_symlink() and checkpoint.read_state(link)["step"] == 2
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["run"]


def test_a_save_refuses_a_file_or_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("not a folder")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        save_checkpoint(tmp_path / "f", random_model())
    assert (tmp_path / "f").read_text() == "not a folder"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="working directory"):
        save_checkpoint(".", random_model())


def test_recovery_restores_a_folder_a_kill_took_away_and_spares_a_live_save(tmp_path):
    runs = tmp_path / "runs"
    save_checkpoint(runs / "run", random_model(), step=4)
    save_checkpoint(runs / "other", random_model(), step=5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has ended
    (runs / "run").rename(runs / f".run.old-{dead_pid}-abc")  # killed between the two renames
    (runs / f".run.new-{dead_pid}-xyz").mkdir()  # and a half-written new one
    live = runs / f".run.new-{os.getppid()}-live"  # a save in progress in a running process
    live.mkdir()
    assert find_trained("run", root=runs) == runs / "run"
    assert checkpoint.read_state(runs / "run")["step"] == 4
    assert sorted(p.name for p in runs.iterdir()) == [live.name, "other", "run"]
    assert checkpoint.read_state(runs / "other")["step"] == 5  # another run's folder is not touched


def test_inspect_folder_tells_run_folders_from_others(tmp_path, saved):
    kind = lambda p: checkpoint.inspect_folder(p).kind  # noqa: E731
    assert kind(tmp_path / "nope") == "missing" and kind(saved) == "checkpoint"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    assert kind(tmp_path / "empty") == "empty"
    (tmp_path / "f").write_text("x")
    assert kind(tmp_path / "f") == "file"
    (saved / "training_state.json").unlink()
    (saved / "notes.txt").write_text("x")
    found = checkpoint.inspect_folder(saved)
    assert found.kind == "weights" and found.ours == ["config.json", "model.safetensors", "optimizer.pt"]
    assert found.others == ["notes.txt"]
    for name in found.ours:
        (saved / name).unlink()
    assert kind(saved) == "other"


def test_where_liveness_is_unknown_temporaries_are_kept_but_a_missing_folder_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_running", lambda pid: None)  # as on Windows
    save_checkpoint(tmp_path / "run", random_model(), step=3)
    (tmp_path / "run").rename(tmp_path / ".run.new-12345-abc")
    (tmp_path / ".run.new-12346-def").mkdir()
    assert checkpoint.read_state(tmp_path / "run")["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.new-12346-def", "run"]


def test_a_missing_folder_whose_old_copy_is_no_checkpoint_is_put_back(tmp_path):
    (tmp_path / ".run.old-999999999-abc").mkdir()  # an empty folder a killed first save was swapping out
    (tmp_path / ".run.old-999999999-abc" / "notes.txt").write_text("mine")
    (tmp_path / ".run.new-999999999-abc").mkdir()  # its half-written replacement
    assert checkpoint.inspect_folder(tmp_path / "run").kind == "other"
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
