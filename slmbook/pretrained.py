"""Real Qwen3 weights: a Hugging Face repository, or a local copy of one, loaded into our QwenModel.

`slmbook.qwen.from_pretrained("Qwen/Qwen3-0.6B")` comes here. Three steps:

1. `resolve` finds the files. A local folder is used as it is. A repository id ("owner/name") goes
   through huggingface_hub's `snapshot_download`: files land once in the hub cache
   (~/.cache/huggingface/hub, or under $HF_HOME), with a progress bar, and only `HUB_FILES` are
   fetched (config, weights, tokenizer; not the other formats a repository may hold). Offline, the
   cached copy is used; with none, `PretrainedNotFound` says which repository, which files are
   missing and how to pass a local folder instead.
2. `load_state_dict` reads the safetensors files (one file, or the shards named in
   model.safetensors.index.json) one tensor at a time, straight into the dtype and device asked for.
3. `load_model` builds the model on PyTorch's "meta" device (shapes and dtypes, no memory, no random
   init), checks the weights against it and makes the loaded tensors its parameters. So a bfloat16
   checkpoint loaded in bfloat16 is never copied to float32 on the way: Qwen3-0.6B's 596 M
   parameters take 1.2 GB.
"""

from __future__ import annotations

import json
import re
from os import PathLike
from pathlib import Path

import torch

from slmbook.dtypes import torch_dtype
from slmbook.env import online, pick_device

QWEN3_0_6B_REPO = "Qwen/Qwen3-0.6B"  # post-trained: chat, thinking on/off
QWEN3_0_6B_BASE_REPO = "Qwen/Qwen3-0.6B-Base"  # pre-trained only: continues text
HUB_HOST = "huggingface.co"

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"  # sharded checkpoints: which file holds which tensor
WEIGHTS = "*.safetensors"
TOKENIZER_FILE = "tokenizer.json"
HUB_FILES = (CONFIG_FILE, "generation_config.json", WEIGHTS, INDEX_FILE, TOKENIZER_FILE, "tokenizer_config.json")
NEEDS = ("model", "tokenizer")

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
OFFLINE = ("the Hugging Face hub is not reachable from here (no network, or HF_HUB_OFFLINE=1) and the "
           "local hub cache holds no copy of it")


class PretrainedNotFound(ValueError):
    """The files of a pretrained model could not be found: no such folder, hub unreachable, files missing.

    `name` is what was asked for, `missing` the files that are not there, `reason` one line on why.
    """

    def __init__(self, name: str, reason: str, missing: tuple[str, ...] = (), hint: str = ""):
        self.name, self.reason, self.missing = name, reason, tuple(missing)
        lines = [f"{name}: {reason}"]
        if missing:
            lines.append(f"missing: {', '.join(missing)}")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


FOLDER_NEEDS = (f"A model folder needs {CONFIG_FILE}, the {WEIGHTS} weights (and {INDEX_FILE} when they are "
                f"sharded) and, for the tokenizer, {TOKENIZER_FILE}.")


def local_copy_hint(name: str) -> str:
    """How to make and pass a local copy of a hub repository (printed with every hub error)."""
    folder = name.rsplit("/", 1)[-1].lower()
    return (f"To work offline, download it where there is network: `hf download {name} --local-dir {folder}` "
            f"(or huggingface_hub.snapshot_download({name!r}, local_dir={folder!r})), copy the folder here "
            f"and pass its path: from_pretrained({folder!r}). " + FOLDER_NEEDS)


def missing_files(folder: Path, need: tuple[str, ...] = ("model",)) -> list[str]:
    """The files `folder` lacks for `need` ('model': config + weights; 'tokenizer': tokenizer.json)."""
    missing = []
    if "model" in need:
        if not (folder / CONFIG_FILE).is_file():
            missing.append(CONFIG_FILE)
        index = folder / INDEX_FILE
        if index.is_file():
            missing += [shard.name for shard in weight_files(folder) if not shard.is_file()]
        elif not any(folder.glob(WEIGHTS)):
            missing.append(WEIGHTS)
    if "tokenizer" in need and not (folder / TOKENIZER_FILE).is_file():
        missing.append(TOKENIZER_FILE)
    return missing


def resolve(name: str | PathLike, revision: str | None = None, cache_dir=None, local_files_only: bool = False,
            need: tuple[str, ...] = ("model",)) -> Path:
    """The local folder holding `name`: a folder as it is, or a hub repository's snapshot (downloaded once).

    `need` names what must be there ('model', 'tokenizer'); anything missing raises PretrainedNotFound.
    """
    if not isinstance(name, (str, PathLike)):
        raise TypeError(f"name={name!r}: expected a hub repository id such as {QWEN3_0_6B_REPO!r} or a folder path")
    unknown = sorted(set(need) - set(NEEDS))
    if unknown:
        raise ValueError(f"need={need!r}: allowed items are {NEEDS}")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PretrainedNotFound(str(name), "is a file; expected a Hugging Face model folder")
        missing = missing_files(path, need)
        if missing:
            raise PretrainedNotFound(str(path), f"this folder has no {', '.join(missing)}: expected a Hugging Face "
                                                f"model folder", tuple(missing), FOLDER_NEEDS)
        return path
    name = str(name)
    if not REPO_ID.fullmatch(name):
        raise PretrainedNotFound(name, f"there is no such folder, and it is not a Hugging Face repository id "
                                       f"(owner/name, e.g. {QWEN3_0_6B_REPO!r})")
    folder = _download(name, revision, cache_dir, local_files_only or not online(HUB_HOST))
    missing = missing_files(folder, need)
    if missing:
        raise PretrainedNotFound(name, "the downloaded or cached copy is incomplete", tuple(missing), local_copy_hint(name))
    return folder


def _download(repo: str, revision, cache_dir, local_files_only: bool) -> Path:
    """huggingface_hub's snapshot of `repo` (only HUB_FILES), or PretrainedNotFound with the reason."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (  # where every huggingface_hub version exports them
        HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    hint = local_copy_hint(repo)
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_FILES),
                                      local_files_only=local_files_only))
    except LocalEntryNotFoundError:  # offline and not (completely) cached
        reason = OFFLINE
    except RevisionNotFoundError:
        reason = f"the hub has no revision {revision!r} of this repository"
    except RepositoryNotFoundError:  # also gated repositories
        reason = ("the hub has no such repository, or it is private or gated (log in with `hf auth login` "
                  "or set HF_TOKEN, after accepting its terms on the hub)")
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", "?")
        reason = f"the hub answered with HTTP error {status} and the local cache holds no copy"
    # outside the except blocks: one clear error, not a chain of the hub library's tracebacks
    raise PretrainedNotFound(repo, reason, (CONFIG_FILE, WEIGHTS, TOKENIZER_FILE), hint)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards of its index, or every *.safetensors file."""
    index = folder / INDEX_FILE
    if not index.is_file():
        return sorted(folder.glob(WEIGHTS))
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{index}: not a safetensors index (a JSON object with a 'weight_map' of tensor -> file); "
                         f"{type(error).__name__}: {error}") from None


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
    """A QwenModel holding the weights of hub repository or folder `name` (see slmbook.qwen.from_pretrained)."""
    from slmbook.positional import RotaryEmbedding
    from slmbook.qwen import QwenModel, config_from_hf, load_hf_state_dict, our_name

    folder = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config_path = folder / CONFIG_FILE
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path}: not a JSON config file ({error})") from error
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_path}: holds a {type(hf_config).__name__}, expected a JSON object of config fields")
    from_hf = config_from_hf
    if hf_config.get("model_type") == "qwen3_moe":  # chapter 13's mixture of experts
        from slmbook.moe import config_from_hf_moe as from_hf
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
    from slmbook.qwen_tokenizer import QwenTokenizer

    folder = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                     need=("model", "tokenizer"))
    model = load_model(folder, dtype=dtype, context_length=context_length, attn_impl=attn_impl, device=device)
    tokenizer = QwenTokenizer.from_folder(folder)
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ValueError(f"{name}: the tokenizer has {tokenizer.n_vocab} ids but the model's table only "
                         f"{model.config.vocab_size}")
    return model, tokenizer
