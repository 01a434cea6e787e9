"""The network and the Hugging Face Hub: is a host reachable, and where a repository's files are.

`online` answers once per host (an offline machine waits a single time, not at every library's
retries); data.py asks it before streaming TinyStories, tokenizer.py before fetching GPT-2's files.
`resolve` turns a model name into a local folder: a folder is used as it is, and a repository id
("owner/name") goes through huggingface_hub's `snapshot_download`: files land once in the hub cache
(~/.cache/huggingface/hub, or under $HF_HOME), with a progress bar, and only `HUB_FILES` are fetched
(config, weights, tokenizer; not the other formats a repository may hold). Offline, the cached copy is
used; with none, `PretrainedNotFound` says which repository, which files are missing and how to pass a
local folder instead. slmbook/pretrained.py loads the model from that folder, qwen_tokenizer.py the
tokenizer.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from os import PathLike
from pathlib import Path


def online(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """True when `host` answers a TCP connection; False offline (or with HF_HUB_OFFLINE=1 set).

    Checked once per host and remembered, so an offline machine pays the check a single time
    instead of waiting for each library's own retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    return _reachable(host, port, timeout)


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
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
