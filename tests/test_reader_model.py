"""The reader's models on the TinyStories tokenizer: the CPU preset learns within its step budget, the
command line tokenizes the shipped sample with that tokenizer for it, and the GPU recipe's smoke run
exports a checkpoint that `load_model` reads."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from slmbook.checkpoint import load_model, read_state
from slmbook.config import READER, READER_GPU, preset
from slmbook.dataloader import read_token_file
from slmbook.scaling import count_parameters
from slmbook.tinystories_tokenizer import TOKENIZER_NAME, tinystories_encoding
from slmbook.train_cli import encoding_of, main, sample_data
from slmbook.training import Trainer
from slmbook.training_config import training_preset

REPO = Path(__file__).parent.parent


def load_benchmark():
    path = REPO / "benchmarks" / "train_reader_model.py"
    spec = importlib.util.spec_from_file_location("train_reader_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reader_data(tmp_path_factory):
    return sample_data(tmp_path_factory.mktemp("reader") / "data", tokenizer=TOKENIZER_NAME)


def test_presets_use_the_tokenizer_and_the_gpu_variants_fit_in_10_mb():
    assert preset("reader") is READER and preset("reader-gpu") is READER_GPU
    assert READER.vocab_size == READER_GPU.vocab_size == tinystories_encoding().n_vocab
    assert training_preset("reader").model is READER and training_preset("reader-gpu").model is READER_GPU
    bench = load_benchmark()
    for name in bench.VARIANTS:
        model = bench.variant_config(name, smoke=False, device="cpu").model
        assert count_parameters(model) * 2 <= bench.MAX_EXPORT_MB * 1e6, name  # bfloat16, tied head stored once


def test_sample_data_in_the_tinystories_tokenizer(reader_data):
    train, info = read_token_file(reader_data / "train.bin")
    assert (info.encoding, info.n_vocab, info.n_stories) == (TOKENIZER_NAME, 4096, 2216)
    assert read_token_file(reader_data / "validation.bin")[1].n_stories == 1000
    assert encoding_of(reader_data / "train.bin") is tinystories_encoding()
    first = np.asarray(train[: int(np.argmax(np.asarray(train) == info.eot_token))])
    assert tinystories_encoding().decode(first.tolist()).startswith("One day, a little girl named Lily")
    stamp = (reader_data / "train.bin").stat().st_mtime_ns
    assert sample_data(reader_data, tokenizer=TOKENIZER_NAME) == reader_data
    assert (reader_data / "train.bin").stat().st_mtime_ns == stamp  # made once, then reused


def test_sample_data_rewrites_files_of_another_tokenizer(reader_data, tmp_path):
    for name in ("train", "validation"):
        for suffix in (".bin", ".json"):
            (tmp_path / f"{name}{suffix}").write_bytes((reader_data / f"{name}{suffix}").read_bytes())
    sample_data(tmp_path, tokenizer="gpt2")
    assert read_token_file(tmp_path / "train.bin")[1].encoding == "gpt2"


def test_reader_preset_learns_within_its_step_budget(reader_data):
    """A third of the preset's steps (its schedule compressed to them) already beats, by far, the best a
    model without context can do: the unigram cross-entropy of the validation tokens under the
    training tokens' frequencies. At initialisation the loss is ln(4096) = 8.3 nats per token."""
    config = training_preset("reader")
    steps = config.steps // 3
    trainer = Trainer(config.replace(steps=steps, device="cpu", eval_interval=0, eval_batches=4, sample_tokens=0),
                      reader_data / "train.bin", reader_data / "validation.bin", encoding=tinystories_encoding(),
                      progress=False)
    before = trainer.evaluate()["val_loss"]
    history = trainer.run()
    train, _ = read_token_file(reader_data / "train.bin")
    val, _ = read_token_file(reader_data / "validation.bin")
    counts = np.bincount(np.asarray(train), minlength=READER.vocab_size) + 1.0
    unigram = float(-np.log(counts / counts.sum())[np.asarray(val)].mean())
    after = history.eval[-1]["val_loss"]
    assert before == pytest.approx(math.log(READER.vocab_size), abs=0.3)
    assert unigram > 5.5
    assert after < unigram - 1.0, (after, unigram)


def test_the_command_line_trains_the_reader_on_the_tinystories_tokenizer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLMBOOK_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    assert main(["--config", "reader", "--steps", "3", "--warmup-steps", "1", "--eval-batches", "1",
                 "--log-interval", "1", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"sample-{TOKENIZER_NAME}" in printed
    state = read_state(out)
    assert state["tokenizer"] == TOKENIZER_NAME and state["model_config"]["vocab_size"] == 4096


def test_gpu_recipe_smoke_run_exports_a_loadable_checkpoint(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "reader"
    assert bench.main(["--smoke", "--out", str(out), "--variants", "base,short"]) == 0
    provenance = json.loads((out / "model" / "provenance.json").read_text())
    assert [v["name"] for v in provenance["variants"]] == ["base", "short"]
    assert provenance["chosen"] in ("base", "short") and provenance["tokenizer"] == TOKENIZER_NAME
    assert provenance["data"]["stories"]["validation"] == 1000 and provenance["data"]["tokens"]["train"] > 0
    assert provenance["command"].startswith("python benchmarks/train_reader_model.py --smoke --out reader")
    exported = provenance["exported"]
    uniform = math.log2(4096) * provenance["data"]["tokens"]["validation"] / provenance["data"]["bytes"]["validation"]
    assert 0 < exported["val_bpb"] < 1.1 * uniform and len(exported["samples"]) == 3
    model = load_model(out / "model")
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert read_state(out / "model")["tokenizer"] == TOKENIZER_NAME
    assert not (out / "model" / "optimizer.pt").exists()
    assert "# The reader's pretrained model (smoke run)" in (out / "model" / "provenance.md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--out", str(out), "--variants", "nope"])
    assert "unknown ['nope']" in capsys.readouterr().err
