"""Bad input is refused where it enters, with an error that names the parameter or file, the value and
what is allowed: token ids (the model's forward, generation prompts), token files and their sidecars,
and the fields of the model, MoE and training configs. Valid edge values are still accepted."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slmbook import hf_interop, moe
from slmbook.config import PRESETS as MODEL_PRESETS
from slmbook.config import QwenConfig
from slmbook.dataloader import TokenBatches, prepare_token_files, read_token_file, write_token_file
from slmbook.generation import generate
from slmbook.hf_interop import config_from_hf, hf_config_kwargs
from slmbook.pretrained import from_pretrained
from slmbook.qwen import QwenModel
from slmbook.tokenizer import CharTokenizer
from slmbook.training_config import PRESETS as TRAIN_PRESETS
from slmbook.training_config import TrainConfig

SMALL = QwenConfig(vocab_size=100, context_length=32, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64)
MOE = SMALL.replace(n_experts=4, n_experts_per_token=2)
INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def env(tmp_path_factory, valid):
    """A small model, and a valid character-level token file of real stories to corrupt copies of."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bad_inputs")
    char = CharTokenizer.train(valid[:50])
    write_token_file(valid[:20], char, folder / "good.bin", progress=False)
    return SimpleNamespace(folder=folder, char=char, good=folder / "good.bin", model=QwenModel(SMALL).eval())


def token_file(env, name: str, data: bytes | None = None, sidecar: bytes | None = None, **info) -> Path:
    """A copy of the good token file as `name`.bin, with its bytes, its sidecar's bytes, or some of
    its sidecar's fields replaced (a field set to `...` is removed)."""
    path = env.folder / f"{name}.bin"
    shutil.copy(env.good, path)
    if data is not None:
        path.write_bytes(data)
    values = json.loads(env.good.with_suffix(".json").read_text())
    values.update(info)
    values = {k: v for k, v in values.items() if v is not ...}
    path.with_suffix(".json").write_bytes(sidecar if sidecar is not None else json.dumps(values).encode())
    return path


def with_id(env, name: str, position: int, value: int) -> Path:
    """A copy of the good token file with one id replaced."""
    path = token_file(env, name)
    tokens = np.memmap(path, dtype=np.uint16, mode="r+")
    tokens[position] = value
    tokens.flush()
    del tokens
    return path


def hf_dict(config=SMALL, drop=()) -> dict:
    """The config.json fields of `config` as transformers writes them, some keys left out."""
    values = {"model_type": "qwen3", **hf_config_kwargs(config)}
    return {k: v for k, v in values.items() if k not in drop}


def hf_moe_dict(drop=()) -> dict:
    values = {**hf_dict(), "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
              "moe_intermediate_size": 64, "norm_topk_prob": True}
    return {k: v for k, v in values.items() if k not in drop}


def pretrained_folder(env, values: dict | bytes) -> Path:
    folder = env.folder / "hf_model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(values if isinstance(values, bytes) else json.dumps(values).encode())
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    return folder


def ids(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def non_utf8_story_file(env) -> Path:
    path = env.folder / "latin1_stories.txt"
    path.write_bytes("Once upon a time there was a caf\xe9.".encode("latin-1"))
    return path


class BadTokenizer:
    """A tokenizer that claims 10 ids but produces id 12: a file written with it would be corrupt."""

    name, n_vocab, eot_token = "bad", 10, 0

    def encode_ordinary(self, text):
        return [1, 12]


# (name, call that must fail, exception type, words the message must contain)
CASES = [
    # --- token ids at the model's forward -----------------------------------------------------------
    ("forward id = vocab", lambda e: e.model(ids([1, 2, 100])), ValueError,
     ["input_ids[0, 2]=100", "vocab_size=100", "0 <= id"]),
    ("forward negative id", lambda e: e.model(ids([1, -1, 3])), ValueError, ["input_ids[0, 1]=-1", "vocab_size=100"]),
    ("forward bad id in row 2", lambda e: e.model(ids([1, 2], [7, 10**6])), ValueError,
     ["input_ids[1, 1]=1000000", "vocab_size=100"]),
    ("forward float ids", lambda e: e.model(torch.tensor([[1.0, 2.0]])), ValueError,
     ["input_ids", "integer tensor", "torch.float32"]),
    ("forward bool ids", lambda e: e.model(torch.tensor([[True, False]])), ValueError,
     ["input_ids", "integer tensor", "torch.bool"]),
    ("forward target = vocab", lambda e: e.model(ids([1, 2]), ids([100, 3])), ValueError,
     ["targets[0, 0]=100", "vocab_size=100", "-100"]),
    ("forward negative target", lambda e: e.model(ids([1, 2]), ids([4, -5])), ValueError,
     ["targets[0, 1]=-5", "-100 (ignored)"]),
    ("forward float targets", lambda e: e.model(ids([1, 2]), torch.tensor([[1.0, 2.0]])), ValueError,
     ["targets", "torch.int64", "torch.float32"]),
    # --- prompts of generate ------------------------------------------------------------------------
    ("prompt of floats", lambda e: generate(e.model, [1.7, 2.2], 2), TypeError, ["input_ids[0]=1.7", "integers"]),
    ("prompt with a float row", lambda e: generate(e.model, [[1, 2], [3, 2.5]], 2), TypeError,
     ["input_ids[1][1]=2.5", "float"]),
    ("prompt of bools", lambda e: generate(e.model, [True, 2], 2), TypeError, ["input_ids[0]=True", "bool"]),
    ("prompt id = vocab", lambda e: generate(e.model, [1, 100], 2), ValueError, ["input_ids[1]=100", "vocab_size=100"]),
    ("prompt negative id", lambda e: generate(e.model, [-3, 4], 2), ValueError, ["input_ids[0]=-3", "vocab_size=100"]),
    ("prompt id past int64", lambda e: generate(e.model, [2**70], 2), ValueError, [f"input_ids[0]={2**70}"]),
    ("prompt tensor id = vocab", lambda e: generate(e.model, ids([1, 100]), 2), ValueError,
     ["input_ids[0, 1]=100", "vocab_size=100"]),
    ("prompt float tensor", lambda e: generate(e.model, torch.tensor([1.0, 2.0]), 2), TypeError,
     ["input_ids", "torch.float32"]),
    ("prompt float numpy", lambda e: generate(e.model, np.array([1.5, 2.0]), 2), TypeError,
     ["input_ids", "torch.float64"]),
    ("prompt ragged rows", lambda e: generate(e.model, [[1, 2], [3]], 2), ValueError, ["input_ids", "[2, 1]"]),
    ("stop_token bool", lambda e: generate(e.model, [1], 2, stop_token=True), ValueError, ["stop_token=True", "[0, 100)"]),
    ("seed bool", lambda e: generate(e.model, [1], 2, seed=True), ValueError, ["seed=True"]),
    ("use_cache string", lambda e: generate(e.model, [1], 2, use_cache="no"), ValueError,
     ["use_cache='no'", "True or False"]),
    ("temperature inf", lambda e: generate(e.model, [1], 2, temperature=INF), ValueError, ["temperature=inf", "finite"]),
    ("max_new_tokens float", lambda e: generate(e.model, [1], 2.0), ValueError, ["max_new_tokens=2.0", "integer"]),
    # --- token files ---------------------------------------------------------------------------------
    ("empty token file", lambda e: read_token_file(token_file(e, "empty", data=b"")), ValueError,
     ["empty.bin", "holds 0 tokens", "empty.json says"]),
    ("empty corpus, no window", lambda e: TokenBatches(write_token_file([], e.char, e.folder / "none.bin",
                                                                        progress=False).path, 1, 8), ValueError,
     ["none.bin", "0 tokens", "0 windows", "context_length + 1 = 9"]),
    ("sidecar not UTF-8", lambda e: read_token_file(token_file(e, "binary_sidecar", sidecar=b"\xff\xfe{}")), ValueError,
     ["binary_sidecar.json", "'utf-8' codec can't decode byte 0xff"]),
    ("sidecar not JSON", lambda e: read_token_file(token_file(e, "broken_sidecar", sidecar=b'{"dtype": ')), ValueError,
     ["broken_sidecar.json", "not a JSON sidecar"]),
    ("sidecar a JSON list", lambda e: read_token_file(token_file(e, "list_sidecar", sidecar=b"[1, 2]")), ValueError,
     ["list_sidecar.json", "JSON list", "n_vocab"]),
    ("sidecar without n_vocab", lambda e: read_token_file(token_file(e, "no_vocab", n_vocab=...)), ValueError,
     ["no_vocab.json", "missing fields ['n_vocab']"]),
    ("sidecar unknown field", lambda e: read_token_file(token_file(e, "extra_field", extra=1)), ValueError,
     ["extra_field.json", "unknown fields ['extra']"]),
    ("sidecar n_vocab a string", lambda e: read_token_file(token_file(e, "str_vocab", n_vocab="63")), ValueError,
     ["str_vocab.json", "n_vocab='63'", "integer"]),
    ("sidecar float dtype", lambda e: read_token_file(token_file(e, "float_dtype", dtype="float32")), ValueError,
     ["float_dtype.json", "dtype='float32'", "uint16"]),
    ("sidecar vocab too big for dtype", lambda e: read_token_file(token_file(e, "big_vocab", n_vocab=70000)), ValueError,
     ["big_vocab.json", "n_vocab=70000", "uint16"]),
    ("sidecar eot outside vocab", lambda e: read_token_file(token_file(e, "bad_eot", eot_token=10**4)), ValueError,
     ["bad_eot.json", "eot_token=10000", "n_vocab"]),
    ("size not whole tokens", lambda e: read_token_file(token_file(e, "odd_size", data=e.good.read_bytes() + b"\0")),
     ValueError, ["odd_size.bin", "not a whole number of uint16 tokens"]),
    ("token count differs", lambda e: read_token_file(token_file(e, "short", data=e.good.read_bytes()[:-2])), ValueError,
     ["short.bin", "short.json says"]),
    ("token id >= n_vocab", lambda e: read_token_file(with_id(e, "foreign_id", 7, 500)), ValueError,
     ["foreign_id.bin", "token id 500 at position 7", "n_vocab="]),
    ("batches over id >= n_vocab", lambda e: TokenBatches(with_id(e, "foreign_last", -1, 65535), 2, 8), ValueError,
     ["foreign_last.bin", "token id 65535", "n_vocab="]),
    ("fewer tokens than a window", lambda e: TokenBatches(write_token_file(["ab"], e.char, e.folder / "tiny.bin",
                                                                           progress=False).path, 1, 64), ValueError,
     ["tiny.bin", "0 windows", "context_length + 1 = 65"]),
    ("token file path None", lambda e: read_token_file(None), TypeError, ["path=None"]),
    ("sidecar missing", lambda e: (e.folder / "alone.bin").write_bytes(b"\0\0") and read_token_file(e.folder / "alone.bin"),
     FileNotFoundError, ["alone.bin", "alone.json"]),
    ("batches shuffle string", lambda e: TokenBatches(e.good, 2, 8, shuffle="yes"), ValueError, ["shuffle='yes'"]),
    ("batches unknown device", lambda e: TokenBatches(e.good, 2, 8, device="gpu"), ValueError, ["device='gpu'"]),
    ("story file not UTF-8", lambda e: prepare_token_files([non_utf8_story_file(e)], e.char, e.folder / "prep",
                                                           progress=False), ValueError,
     ["latin1_stories.txt", "UTF-8", "0xe9"]),
    ("tokenizer id outside its vocab", lambda e: write_token_file(["a"], BadTokenizer(), e.folder / "badtok.bin",
                                                                  progress=False), ValueError,
     ["badtok.bin", "token id 12", "n_vocab=10"]),
    # --- model config -------------------------------------------------------------------------------
    ("tie_embeddings 'no'", lambda e: SMALL.replace(tie_embeddings="no"), ValueError,
     ["QwenConfig.tie_embeddings='no'", "True or False"]),
    ("qk_norm 0", lambda e: SMALL.replace(qk_norm=0), ValueError, ["QwenConfig.qk_norm=0", "True or False"]),
    ("norm_eps inf", lambda e: SMALL.replace(norm_eps=INF), ValueError, ["QwenConfig.norm_eps=inf", "finite", "> 0"]),
    ("norm_eps nan", lambda e: SMALL.replace(norm_eps=NAN), ValueError, ["QwenConfig.norm_eps=nan", "finite"]),
    ("norm_eps 0", lambda e: SMALL.replace(norm_eps=0.0), ValueError, ["QwenConfig.norm_eps=0.0", "> 0"]),
    ("rope_theta inf", lambda e: SMALL.replace(rope_theta=INF), ValueError, ["QwenConfig.rope_theta=inf", "finite"]),
    ("rope_theta string", lambda e: SMALL.replace(rope_theta="1e6"), ValueError,
     ["QwenConfig.rope_theta='1e6'", "finite number"]),
    ("rope_theta negative", lambda e: SMALL.replace(rope_theta=-1.0), ValueError, ["QwenConfig.rope_theta=-1.0", "> 0"]),
    ("dtype a torch dtype", lambda e: SMALL.replace(dtype=torch.float32), ValueError,
     ["QwenConfig.dtype=torch.float32", "'bfloat16'"]),
    ("head_dim float", lambda e: SMALL.replace(head_dim=8.0), ValueError, ["QwenConfig.head_dim=8.0", "even integer"]),
    ("n_layers a string", lambda e: QwenConfig.from_dict({**SMALL.to_dict(), "n_layers": "2"}), ValueError,
     ["QwenConfig.n_layers='2'", "positive integer"]),
    ("from_dict of a list", lambda e: QwenConfig.from_dict([("dim", 32)]), TypeError,
     ["[('dim', 32)]", "dict of QwenConfig fields"]),
    # --- mixture-of-experts fields ------------------------------------------------------------------
    ("router_aux_loss_coef inf", lambda e: MOE.replace(router_aux_loss_coef=INF), ValueError,
     ["QwenConfig.router_aux_loss_coef=inf", "finite", ">= 0"]),
    ("router_z_loss_coef negative", lambda e: MOE.replace(router_z_loss_coef=-0.1), ValueError,
     ["QwenConfig.router_z_loss_coef=-0.1", ">= 0"]),
    ("router_bias_update_rate nan", lambda e: MOE.replace(router_bias_update_rate=NAN), ValueError,
     ["QwenConfig.router_bias_update_rate=nan", "finite"]),
    ("capacity_factor inf", lambda e: MOE.replace(capacity_factor=INF), ValueError,
     ["QwenConfig.capacity_factor=inf", "> 0", "None"]),
    ("capacity_factor bool", lambda e: MOE.replace(capacity_factor=True), ValueError, ["QwenConfig.capacity_factor=True"]),
    ("router_normalize string", lambda e: MOE.replace(router_normalize="yes"), ValueError,
     ["QwenConfig.router_normalize='yes'", "True or False"]),
    ("router_score None", lambda e: MOE.replace(router_score=None), ValueError,
     ["QwenConfig.router_score=None", "'sigmoid'"]),
    ("layer aux_loss_coef inf", lambda e: moe.MoEFeedForward(8, 4, 2, 8, aux_loss_coef=INF), ValueError,
     ["aux_loss_coef=inf", "finite"]),
    ("layer capacity_factor nan", lambda e: moe.MoEFeedForward(8, 4, 2, 8, capacity_factor=NAN), ValueError,
     ["capacity_factor=nan", "None"]),
    ("router normalize 'no'", lambda e: moe.TopKRouter(8, 4, 2, normalize="no"), ValueError,
     ["normalize='no'", "True or False"]),
    # --- transformers configs -----------------------------------------------------------------------
    ("hf config keys missing", lambda e: config_from_hf(hf_dict(drop=("hidden_size", "rms_norm_eps"))), ValueError,
     ["missing ['hidden_size', 'rms_norm_eps']", "Qwen3"]),
    ("hf config key null", lambda e: config_from_hf({**hf_dict(), "vocab_size": None}), ValueError,
     ["missing ['vocab_size']"]),
    ("hf config not a config", lambda e: config_from_hf(42), TypeError, ["hf_config=int", "config.json"]),
    ("hf moe config keys missing", lambda e: hf_interop.config_from_hf_moe(hf_moe_dict(drop=("num_experts_per_tok",))),
     ValueError, ["missing ['num_experts_per_tok']", "Qwen3-MoE"]),
    ("hf moe config without experts", lambda e: hf_interop.config_from_hf_moe(hf_moe_dict(drop=("num_experts",))),
     ValueError, ["'num_experts'", "num_local_experts"]),
    ("config.json keys missing", lambda e: from_pretrained(pretrained_folder(e, hf_dict(drop=("num_hidden_layers",)))),
     ValueError, ["config.json", "missing ['num_hidden_layers']"]),
    ("config.json not UTF-8", lambda e: from_pretrained(pretrained_folder(e, b"\xff{}")), ValueError,
     ["config.json", "0xff"]),
    # --- training config ----------------------------------------------------------------------------
    ("warmup beyond steps", lambda e: TrainConfig(warmup_steps=500, steps=200), ValueError,
     ["TrainConfig.warmup_steps=500", "steps=200", "0..200"]),
    ("lr inf", lambda e: TrainConfig(lr=INF), ValueError, ["TrainConfig.lr=inf", "finite"]),
    ("lr a string", lambda e: TrainConfig(lr="1e-3"), ValueError, ["TrainConfig.lr='1e-3'"]),
    ("min_lr_ratio nan", lambda e: TrainConfig(min_lr_ratio=NAN), ValueError, ["TrainConfig.min_lr_ratio=nan", "[0.0, 1.0]"]),
    ("grad_clip negative", lambda e: TrainConfig(grad_clip=-1.0), ValueError, ["TrainConfig.grad_clip=-1.0"]),
    ("compile a string", lambda e: TrainConfig(compile="yes"), ValueError, ["TrainConfig.compile='yes'", "True or False"]),
    ("steps a float", lambda e: TrainConfig(steps=100.0), ValueError, ["TrainConfig.steps=100.0", "integer"]),
    ("device unknown", lambda e: TrainConfig(device="gpu"), ValueError, ["TrainConfig.device='gpu'", "'cuda'"]),
    ("device None", lambda e: TrainConfig(device=None), ValueError, ["TrainConfig.device=None"]),
    ("saved model field wrong", lambda e: TrainConfig.from_dict({"model": {**SMALL.to_dict(), "qk_norm": 0}}), ValueError,
     ["QwenConfig.qk_norm=0"]),
]


def test_the_table_covers_at_least_40_kinds():
    assert len({name for name, *_ in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("name, call, error, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_it(env, name, call, error, words):
    with pytest.raises(error) as info:
        call(env)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# --- positive controls: valid edge values are still accepted ----------------------------------------


def test_the_edge_ids_pass_forward_and_generate(env):
    model = env.model
    edge = ids([0, SMALL.vocab_size - 1])
    logits, loss = model(edge, ids([SMALL.vocab_size - 1, -100]))
    assert logits.shape == (1, 2, SMALL.vocab_size) and math.isfinite(loss.item())
    assert torch.equal(model(edge.int()), model(edge))  # int32 ids are token ids too
    out = generate(model, [0, SMALL.vocab_size - 1], 3)
    assert out[:2].tolist() == [0, SMALL.vocab_size - 1] and len(out) == 5
    as_numpy = generate(model, np.array([0, 5], dtype=np.uint16), 3)  # a slice of a token file
    assert torch.equal(as_numpy, generate(model, [np.int64(0), 5], 3)) and torch.equal(as_numpy, generate(model, [0, 5], 3))


def test_the_check_costs_no_read_when_turned_off_or_compiled(env, monkeypatch):
    """check_ids=False (a loop whose ids were checked at load) skips the read; torch.compile traces
    the model with the check left out: fullgraph=True would fail on the graph break of a .tolist()."""
    model = QwenModel(SMALL).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = ids([1, 2, 3])
    assert torch.allclose(compiled(x, x)[1], model(x, x)[1])

    def refuse(*args):
        raise AssertionError("the range check ran")

    monkeypatch.setattr(model, "_check_ids", refuse)
    model.check_ids = False
    model(x, x)
    model.check_ids = True
    with pytest.raises(AssertionError, match="the range check ran"):
        model(x)


def test_valid_token_files_still_load(env):
    tokens, info = read_token_file(env.good)
    assert len(tokens) == info.n_tokens > 0 and int(tokens.max()) < info.n_vocab
    edge = with_id(env, "edge_id", 3, info.n_vocab - 1)  # the largest id allowed
    assert int(read_token_file(edge)[0][3]) == info.n_vocab - 1
    empty = write_token_file([], env.char, env.folder / "empty_corpus.bin", progress=False)
    tokens, info = read_token_file(empty.path)  # a corpus without stories is an empty file, not a crash
    assert len(tokens) == 0 and info.n_tokens == 0


def test_valid_edge_configs_are_accepted():
    config = SMALL.replace(rope_theta=10_000, norm_eps=1e-12, tie_embeddings=False, qk_norm=False)
    assert config.rope_theta == 10_000
    moe_config = MOE.replace(capacity_factor=1, router_aux_loss_coef=0, router_z_loss_coef=0.0,
                             router_bias_update_rate=0.001, router_normalize=False)
    assert moe_config.capacity_factor == 1 and MOE.replace(capacity_factor=None).capacity_factor is None
    assert config_from_hf(hf_dict(drop=("max_position_embeddings",)), context_length=16).context_length == 16
    for steps, warmup in ((200, 200), (1, 0), (1, 1)):
        assert TrainConfig(steps=steps, warmup_steps=warmup).warmup_steps == warmup
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert TrainConfig(device=device).device == device  # existence is checked when training starts
    for presets in (MODEL_PRESETS, TRAIN_PRESETS):
        for value in presets.values():
            assert type(value).from_dict(value.to_dict()) == value
