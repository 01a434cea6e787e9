"""Loading Qwen3 checkpoints by repository id or folder, against transformers, offline.

A random-weight Qwen3 with the real model's peculiarities (tied embeddings, head_dim != dim / n_heads,
rope_theta 1e6, QK-norm) is saved by transformers with a Qwen-style tokenizer, and placed in a hub
cache laid out as huggingface_hub writes it. With HF_HUB_OFFLINE=1 the real `snapshot_download`
then finds it there: the same code path as a download, minus the network.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from test_qwen_tokenizer import write_tokenizer_files
from transformers import Qwen3Config, Qwen3ForCausalLM

from slmbook import hub
from slmbook.config import QWEN3_0_6B, QwenConfig
from slmbook.hf_interop import config_from_hf, hf_config_kwargs, to_hf_state_dict
from slmbook.hub import HUB_FILES, PretrainedNotFound, resolve
from slmbook.pretrained import from_pretrained, load_qwen3, load_state_dict
from slmbook.qwen import QwenModel
from slmbook.qwen_tokenizer import IM_END, QwenTokenizer

REPO = "slmbook-tests/tiny-qwen3"  # never on the hub: even a networked run cannot download anything
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Qwen3-0.6B's peculiarities at toy size: 4 heads x 32 = 128 != dim 64, theta 1e6, tied, QK-norm
TINY = dict(vocab_size=50304, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=96, max_position_embeddings=128, rope_theta=1_000_000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=True)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test runs as on a machine without network (CI may have some: no test may download)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def reference_model(dtype=torch.float32, seed=0) -> Qwen3ForCausalLM:
    """transformers' Qwen3 with every weight, norms included, at a scale where a wrong mapping shows."""
    torch.manual_seed(seed)
    hf = Qwen3ForCausalLM(Qwen3Config(**TINY, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return hf.to(dtype)


def write_generation_config(folder: Path, tokenizer: QwenTokenizer) -> None:
    """Qwen3-0.6B's generation_config.json fields, with this tokenizer's ids."""
    end, eot = tokenizer.token_id(IM_END), tokenizer.eot_token
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": eot, "do_sample": True, "eos_token_id": [end, eot], "pad_token_id": eot,
        "temperature": 0.6, "top_k": 20, "top_p": 0.95}))


def model_folder(folder: Path, dtype=torch.float32, **save_kwargs) -> Path:
    hf = reference_model(dtype)
    hf.save_pretrained(folder, **save_kwargs)
    write_tokenizer_files(folder)
    write_generation_config(folder, QwenTokenizer.from_folder(folder))
    return folder


def hub_cache(cache: Path, source: Path, repo: str = REPO) -> Path:
    """`source`'s files as huggingface_hub's cache holds a downloaded snapshot of `repo`."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source, storage / "snapshots" / COMMIT)
    return cache


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory, source):
    return hub_cache(tmp_path_factory.mktemp("hub-cache"), source)


def test_hub_path_loads_the_cached_snapshot_with_only_the_needed_files(cache, monkeypatch):
    """Through the real snapshot_download (spied on): it is asked for HUB_FILES only."""
    import huggingface_hub

    calls = []
    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    folder = resolve(REPO, cache_dir=cache, need=("model", "tokenizer"))
    assert folder == cache / "models--slmbook-tests--tiny-qwen3" / "snapshots" / COMMIT
    assert calls and calls[0]["allow_patterns"] == list(HUB_FILES) and calls[0]["local_files_only"] is True


def test_only_the_needed_files_match():
    """huggingface_hub's own pattern filter over the files of a repository like Qwen/Qwen3-0.6B's."""
    from huggingface_hub.utils import filter_repo_objects

    repo_files = [".gitattributes", "LICENSE", "README.md", "config.json", "generation_config.json", "merges.txt",
                  "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                  "pytorch_model.bin", "onnx/model.onnx", "model-00001-of-00002.safetensors",
                  "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    fetched = sorted(filter_repo_objects(repo_files, allow_patterns=list(HUB_FILES)))
    assert fetched == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                       "model-00002-of-00002.safetensors", "model.safetensors", "model.safetensors.index.json",
                       "tokenizer.json", "tokenizer_config.json"]


def test_logits_and_greedy_tokens_equal_transformers(cache, source):
    model, tokenizer = load_qwen3(REPO, cache_dir=cache)
    hf = Qwen3ForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    # the real model's peculiarities made it through config.json
    assert model.config.head_dim == 32 != model.config.dim // model.config.n_heads
    assert model.config.rope_theta == 1e6 == model.rope.theta and model.config.tie_embeddings
    assert model.lm_head.weight is model.embed_tokens.weight  # still one matrix after assigning the loaded one
    torch.testing.assert_close(model.layers[1].self_attn.q_norm.weight, hf.model.layers[1].self_attn.q_norm.weight)
    prompt = tokenizer.encode_chat([{"role": "user", "content": "Tell me a story about a cat."}])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        expected, got = hf(ids).logits, model(ids)
    assert expected.abs().max() > 1.0
    assert (got - expected).abs().max().item() <= 1e-5
    end = tokenizer.eos_token_id
    new = 24
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=end, pad_token_id=end)[0]
    ours = model.generate(ids[0], new, stop_token=end)  # greedy, through the KV cache
    assert ours.tolist() == ref.tolist()
    assert len(set(ours[len(prompt):].tolist())) > 1  # a real continuation, not one token repeated
    assert tokenizer.decode(ours[len(prompt):].tolist())  # readable as text


def test_sharded_checkpoint_loads_from_its_index(tmp_path):
    folder = model_folder(tmp_path / "sharded", max_shard_size="1MB")
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    hf = Qwen3ForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    model = from_pretrained(REPO, cache_dir=hub_cache(tmp_path / "cache", folder))
    ids = torch.randint(0, TINY["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5
    (folder / shards[1]).unlink()
    with pytest.raises(PretrainedNotFound, match=f"has no {shards[1]}"):
        from_pretrained(folder)


def test_bfloat16_checkpoint_loads_as_bfloat16_without_float32(tmp_path):
    from safetensors.torch import load_file

    folder = model_folder(tmp_path / "bf16", dtype=torch.bfloat16)
    stored = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    model = from_pretrained(folder)  # dtype=None: the checkpoint's (config.json says bfloat16)
    assert model.config.dtype == "bfloat16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope.cos.dtype == torch.float32  # the RoPE tables are computed, in float32, as usual
    for name, p in model.state_dict().items():  # the very values of the file
        if name != "lm_head.weight":
            assert torch.equal(p, stored[f"model.{name}"])
    hf = Qwen3ForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, TINY["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, ref = model(ids).float(), hf(ids).logits.float()
    assert (got - ref).abs().max().item() <= 0.02 * ref.abs().max().item()
    asked = from_pretrained(folder, dtype="float32")  # asking for float32 converts each tensor
    assert {p.dtype for p in asked.parameters()} == {torch.float32}


PEAK_SCRIPT = """
import json, sys, torch
from slmbook.config import QwenConfig
from slmbook.qwen import QwenModel
from slmbook.pretrained import from_pretrained

def status(key):  # kB
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM := VmRSS
        f.write("5")

with torch.device("meta"):  # PyTorch's one-time import of its meta-device ops (~150 MB of modules)
    QwenModel(QwenConfig())
reset_peak(); before = status("VmRSS")
model = from_pretrained(sys.argv[1])
for p in model.parameters():  # read every byte of every weight (memory-mapped pages count once read)
    p.view(torch.int16).max()
load = status("VmHWM") - before
dtypes = sorted({str(p.dtype) for p in model.parameters()})
with torch.no_grad():
    model(torch.tensor([[1, 2, 3, 4]]))  # it runs
reset_peak(); before = status("VmRSS")
control = QwenModel(model.config.replace(dtype="float32"))  # what a float32 copy would cost
float32 = status("VmHWM") - before
print(json.dumps({"load_kb": load, "float32_kb": float32, "dtypes": dtypes}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak-memory reset needs Linux /proc")
def test_bfloat16_load_peak_memory_is_one_copy_of_the_weights(tmp_path):
    """A ~90 MB bf16 checkpoint: loading it and reading every weight raises the process's peak memory by
    about its size, not by the 2x more a float32 copy on the way would cost (in a fresh process)."""
    from safetensors.torch import save_file

    config = QwenConfig(vocab_size=32768, context_length=64, dim=1024, n_layers=1, n_heads=8, n_kv_heads=4,
                        head_dim=128, hidden_dim=3072, dtype="bfloat16")
    model = QwenModel(config)
    state = {k: v.contiguous() for k, v in to_hf_state_dict(model).items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**hf_config_kwargs(config), "model_type": "qwen3",
                                                      "torch_dtype": "bfloat16"}))
    weights_kb = sum(t.numel() * t.element_size() for t in state.values()) / 1024
    del model, state
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dtypes"] == ["torch.bfloat16"]
    assert result["float32_kb"] > 1.8 * weights_kb  # the measurement sees a float32 model
    assert result["load_kb"] < 1.25 * weights_kb + 40 * 1024, result


def test_qwen3_0_6b_shape_builds_like_transformers_on_meta():
    """The real model's shape, no weights: our parameter count is transformers', bf16 bytes ~1.2 GB."""
    with torch.device("meta"):
        ours = QwenModel(QWEN3_0_6B)
        hf = Qwen3ForCausalLM(Qwen3Config(**hf_config_kwargs(QWEN3_0_6B)))
    assert ours.num_parameters() == hf.num_parameters() == 596_049_920
    assert ours.config.head_dim == 128 != ours.config.dim // ours.config.n_heads
    assert tuple(ours.layers[0].self_attn.q_norm.weight.shape) == (128,)
    assert 1.1e9 < ours.num_parameters() * 2 < 1.3e9


# --- what goes wrong, said clearly ---------------------------------------------------------------------


def test_offline_without_a_copy_says_what_to_do(tmp_path):
    with pytest.raises(PretrainedNotFound) as caught:
        from_pretrained("Qwen/Qwen3-0.6B", cache_dir=tmp_path)
    error = caught.value
    message = str(error)
    assert message.startswith("Qwen/Qwen3-0.6B: the Hugging Face hub is not reachable")
    assert error.missing == ("config.json", "*.safetensors", "tokenizer.json")
    assert "missing: config.json, *.safetensors, tokenizer.json" in message
    assert "hf download Qwen/Qwen3-0.6B --local-dir qwen3-0.6b" in message
    assert "from_pretrained('qwen3-0.6b')" in message
    assert error.__context__ is None and error.__cause__ is None  # one error, not the hub library's chain
    assert str(tmp_path) not in message  # the same words on every machine (a notebook may print them)
    with pytest.raises(PretrainedNotFound, match="Qwen/Qwen3-0.6B-Base"):
        QwenTokenizer.from_pretrained("Qwen/Qwen3-0.6B-Base", cache_dir=tmp_path)


def pretend_online(monkeypatch, endpoint: str) -> None:
    """Network on, and the hub at `endpoint` (a local address: nothing leaves the machine)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    for name in ("NO_PROXY", "no_proxy"):  # a CI proxy must not take the local requests
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setattr(hub, "online", lambda host: True)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)


def test_unreachable_hub_is_reported_like_offline(tmp_path, monkeypatch):
    """Network 'up' but the hub's address refuses connections: huggingface_hub's real failure path."""
    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pretend_online(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(PretrainedNotFound, match="not reachable") as caught:
        from_pretrained(REPO, cache_dir=tmp_path)
    assert caught.value.__context__ is None


class _HubSaysNo(http.server.BaseHTTPRequestHandler):
    error_code = "RepoNotFound"

    def do_GET(self):
        self.send_response(404)
        self.send_header("X-Error-Code", self.error_code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "not found"}')

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("error_code, match", [("RepoNotFound", "no such repository"),
                                               ("RevisionNotFound", "no revision 'v9'")])
def test_hub_refusals_are_named(tmp_path, monkeypatch, error_code, match):
    """A local server answers as the hub does for a missing repository or revision."""
    handler = type("Handler", (_HubSaysNo,), {"error_code": error_code})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pretend_online(monkeypatch, f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(PretrainedNotFound, match=match) as caught:
            from_pretrained(REPO, cache_dir=tmp_path, revision="v9")
        assert REPO in str(caught.value) and "--local-dir" in str(caught.value)
    finally:
        server.shutdown()


def test_incomplete_cached_copy_names_the_missing_files(tmp_path, source):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(source / "config.json", partial)
    cache = hub_cache(tmp_path / "cache", partial)
    with pytest.raises(PretrainedNotFound, match=r"incomplete\nmissing: \*\.safetensors\n"):
        from_pretrained(REPO, cache_dir=cache)
    with pytest.raises(PretrainedNotFound, match="missing: tokenizer.json"):
        QwenTokenizer.from_pretrained(REPO, cache_dir=cache)


def test_local_folder_errors(tmp_path, source):
    with pytest.raises(PretrainedNotFound, match="no such folder, and it is not a Hugging Face repository id"):
        from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(PretrainedNotFound, match="is a file"):
        from_pretrained(source / "config.json")
    model_only = tmp_path / "model-only"
    model_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, model_only)
    assert isinstance(from_pretrained(model_only), QwenModel)  # the tokenizer is not needed for the model
    with pytest.raises(PretrainedNotFound, match="this folder has no tokenizer.json"):
        load_qwen3(model_only)
    with pytest.raises(TypeError, match="name=3"):
        from_pretrained(3)
    with pytest.raises(ValueError, match="need="):
        resolve(source, need=("weights",))
    (model_only / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a safetensors index"):
        load_state_dict(model_only)


def test_device_and_dtype_arguments(source):
    model = from_pretrained(source, dtype="bfloat16", context_length=32, device="cpu")
    assert model.config.context_length == 32 and model.rope.cos.shape[0] == 32
    assert next(model.parameters()).device.type == "cpu"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert config_from_hf(json.loads((source / "config.json").read_text()), dtype="bfloat16",
                          context_length=32) == model.config
    with pytest.raises(ValueError, match="dtype='int8'"):
        from_pretrained(source, dtype="int8")
    with pytest.raises(ValueError, match="device='tpu'"):
        from_pretrained(source, device="tpu")


def test_the_chapter_snippet_skips_in_one_line_offline(tmp_path, capsys):
    """The code a notebook section runs: offline it prints one line and goes on."""
    code = textwrap.dedent("""
        try:
            model, tokenizer = load_qwen3("Qwen/Qwen3-0.6B", dtype="bfloat16", context_length=4096, cache_dir=cache)
        except PretrainedNotFound as error:
            model = tokenizer = None
            print(f"Skipped the real Qwen3-0.6B: {error.reason}.")
    """)
    exec(code, {"load_qwen3": load_qwen3, "PretrainedNotFound": PretrainedNotFound, "cache": tmp_path})
    out = capsys.readouterr().out
    assert out == ("Skipped the real Qwen3-0.6B: the Hugging Face hub is not reachable from here (no network, or "
                   "HF_HUB_OFFLINE=1) and the local hub cache holds no copy of it.\n")
