"""The pretrained model that ships with slmbook loads offline and is as good as its provenance says."""

import json
import math

import torch
import torch.nn.functional as F

from slmbook.checkpoint import checkpoint_tokenizer, load_model, shipped_model_dir, trained_or_shipped
from slmbook.data import load_stories
from slmbook.metrics import bits_per_byte


def test_the_shipped_model_and_its_tokenizer_load_offline(tmp_path):
    folder = shipped_model_dir()
    assert trained_or_shipped("no-such-run", root=tmp_path) == folder
    model = load_model(folder)
    encoding = checkpoint_tokenizer(folder)
    assert encoding.name == "tinystories-4k" and encoding.n_vocab == model.config.vocab_size == 4096
    assert (folder / "model.safetensors").stat().st_size < 10e6  # "at most about 10 MB"
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["tokenizer"] == encoding.name and not provenance["smoke"]


def test_the_shipped_model_scores_whole_validation_stories_at_least_as_well_as_its_provenance_says():
    """Bits per byte by hand (F.cross_entropy over each story from its start, / ln 2 / UTF-8 bytes) on
    the first 20 official validation stories. The provenance's figure is the Trainer's, over 512-token
    windows of all 1,000 stories cut anywhere (so less context per token): the by-hand figure on whole
    stories must be at least as good."""
    folder = shipped_model_dir()
    model = load_model(folder).float()
    encoding = checkpoint_tokenizer(folder)
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for story in load_stories("validation", source="sample", verbose=False)[:20]:
            ids = [encoding.eot_token] + encoding.encode_ordinary(story)
            ids = torch.tensor(ids[: model.config.context_length + 1])
            logits = model(ids[None, :-1])  # (1, T, vocab)
            nats += F.cross_entropy(logits[0], ids[1:], reduction="sum").item()
            n_bytes += len(encoding.decode(ids[1:].tolist()).encode("utf-8"))
    measured = bits_per_byte(nats, n_bytes)
    recorded = json.loads((folder / "provenance.json").read_text())["exported"]["val_bpb"]
    assert math.isfinite(measured) and measured <= recorded + 0.02, (measured, recorded)
    assert recorded < 0.8  # a model that has learned: a uniform guess over 4,096 tokens is ~3 bits/byte


def test_the_reader_gpu_preset_is_the_recipe_of_the_shipped_model():
    """The chapters and the README call `reader-gpu` the recipe of the shipped model: its training config
    (saved in the checkpoint) is that preset, on the device it ran on."""
    from slmbook.checkpoint import read_state
    from slmbook.training_config import training_preset

    folder = shipped_model_dir()
    saved = read_state(folder)["train_config"]
    assert saved == training_preset("reader-gpu").replace(device=saved["device"]).to_dict()
    provenance = json.loads((folder / "provenance.json").read_text())
    chosen = next(v for v in provenance["variants"] if v["name"] == provenance["chosen"])
    assert chosen["config"] == saved and chosen["best_step"] == read_state(folder)["step"]
