"""Real Qwen3 weights: a Hugging Face repository, or a local copy of one, loaded into our QwenModel.

`from_pretrained("Qwen/Qwen3-0.6B")` (or a folder) in three steps:

1. `slmbook.hub.resolve` finds the files: a local folder as it is, or the hub's copy, downloaded once
   into the hub cache (offline: the cached copy, or `PretrainedNotFound` saying what to do).
2. `load_state_dict` reads the safetensors files (one file, or the shards named in
   model.safetensors.index.json) one tensor at a time, straight into the dtype and device asked for.
3. `load_model` builds the model on PyTorch's "meta" device (shapes and dtypes, no memory, no random
   init), checks the weights against it (slmbook/hf_interop.py's name and shape checks) and makes the
   loaded tensors its parameters. So a bfloat16 checkpoint loaded in bfloat16 is never copied to
   float32 on the way: Qwen3-0.6B's 596 M parameters take 1.2 GB.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import torch

from slmbook.dtypes import torch_dtype
from slmbook.env import pick_device
from slmbook.hf_interop import config_from_hf, config_from_hf_moe, load_hf_state_dict, our_name

# Chapter 11 imports `PretrainedNotFound` and `resolve` from here, next to the loaders that use them.
from slmbook.hub import (  # noqa: F401
    CONFIG_FILE,
    QWEN3_0_6B_BASE_REPO,
    QWEN3_0_6B_REPO,
    WEIGHTS,
    PretrainedNotFound,
    resolve,
    weight_files,
)
from slmbook.positional import RotaryEmbedding
from slmbook.qwen import QwenModel
from slmbook.qwen_tokenizer import QwenTokenizer


def load_state_dict(folder: str | Path, dtype=None, device="cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `folder`, under its file names, in `dtype` on `device`.

    safetensors reads one tensor at a time (memory-mapped, straight onto `device`); a tensor already
    in `dtype` is kept as it is, so no second copy of the weights is ever made.
    """
    from safetensors import safe_open

    folder = Path(folder)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = None if dtype is None else torch_dtype(dtype)
    files = weight_files(folder)
    if not files:
        raise ValueError(f"folder={str(folder)!r} has no {WEIGHTS} weight files")
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key in state:
                    raise ValueError(f"{file.name}: tensor {key!r} is also in another weight file")
                tensor = f.get_tensor(key)
                state[key] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
    return state


def load_model(name: str | PathLike, dtype=None, context_length: int | None = None, attn_impl: str = "sdpa",
               device=None, revision: str | None = None, cache_dir=None, local_files_only: bool = False):
    """A QwenModel holding the weights of hub repository or folder `name` (see `from_pretrained`)."""
    folder = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config_path = folder / CONFIG_FILE
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path}: not a JSON config file ({error})") from error
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_path}: holds a {type(hf_config).__name__}, expected a JSON object of config fields")
    from_hf = config_from_hf_moe if hf_config.get("model_type") == "qwen3_moe" else config_from_hf  # chapter 13's MoE
    try:
        config = from_hf(hf_config, dtype=dtype, context_length=context_length)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from error
    device = pick_device("cpu" if device is None else device)
    state = load_state_dict(folder, config.dtype, device)

    # The model's shape without memory: its tensors will be the loaded ones. (The first meta build in a
    # process imports PyTorch's reference ops for the meta device: about 4 s once, on 2 CPU cores.)
    with torch.device("meta"):
        model = QwenModel(config, attn_impl=attn_impl)
    load_hf_state_dict(model, state)  # its checks (names, shapes, tied head); copying into meta is free
    ours = {our_name(k): v for k, v in state.items()}
    if config.tie_embeddings:
        ours.pop("lm_head.weight", None)  # equal to the embedding (checked above)
    model.load_state_dict(ours, strict=False, assign=True)  # the loaded tensors become the parameters
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assigning replaced the shared matrix: share it again
    model.rope = RotaryEmbedding(config.head_dim, config.context_length, config.rope_theta).to(device)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"{name}: tensors {on_meta[:8]} were not loaded")
    return model


def load_qwen3(name: str | PathLike = QWEN3_0_6B_REPO, dtype=None, context_length: int | None = None,
               attn_impl: str = "sdpa", device=None, revision: str | None = None, cache_dir=None,
               local_files_only: bool = False):
    """(model, tokenizer) of one repository or folder, resolved once: the pair chapter 11 chats with."""
    folder = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                     need=("model", "tokenizer"))
    model = load_model(folder, dtype=dtype, context_length=context_length, attn_impl=attn_impl, device=device)
    tokenizer = QwenTokenizer.from_folder(folder)
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ValueError(f"{name}: the tokenizer has {tokenizer.n_vocab} ids but the model's table only "
                         f"{model.config.vocab_size}")
    return model, tokenizer


def from_pretrained(name: str | Path, dtype=None, context_length: int | None = None, attn_impl: str = "sdpa",
                    device=None, revision: str | None = None, cache_dir=None,
                    local_files_only: bool = False) -> QwenModel:
    """Load a Qwen3 checkpoint: a hub repository id ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B-Base") or a
    local Hugging Face folder (config.json + *.safetensors, sharded or not).

    `model = from_pretrained("Qwen/Qwen3-0.6B", dtype="bfloat16", context_length=4096)` downloads once
    into the hub cache; offline it uses the cached copy, or raises slmbook.pretrained.PretrainedNotFound
    saying how to pass a local folder instead. The weights load in `dtype` (default: the checkpoint's)
    on `device` without an intermediate copy. `context_length` shortens the RoPE tables (Qwen3-0.6B
    allows 40,960 positions); the weights do not depend on it. The same `load_hf_state_dict` as the
    equivalence tests checks the mapping.
    """
    return load_model(name, dtype=dtype, context_length=context_length, attn_impl=attn_impl, device=device,
                      revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
