"""Checkpoints: a trained model on disk, safe to interrupt, and readable by `transformers` (chapter 14).

A checkpoint is one folder (the book's convention: `runs/<run name>/`, e.g. `runs/book/`):

    config.json           the model's shape as a Hugging Face Qwen3 (or Qwen3-MoE) config
    model.safetensors     the weights under transformers' names (the tied head stored once)
    optimizer.pt          AdamW's moments and step counters (torch.save), only for resuming
    training_state.json   step, model and training configs, history, and a SHA-256 of each file above

So the folder is at once a `transformers` model folder (`Qwen3ForCausalLM.from_pretrained(folder)`)
and a resumable training state. Why these rules:

- A checkpoint is replaced as one unit, never file by file: a run killed while saving keeps its
  previous checkpoint whole. A save first turns everything into bytes (so an `extra` that JSON cannot
  hold fails before anything on disk changes), writes every file into a fresh hidden sibling folder
  `.NAME.new-<pid>-<random>` (same parent, so the same file system), flushes files and folder to disk,
  and only then puts that folder in the place of the old one. That swap is the single commit point.
  On Linux it is one system call, renameat2(RENAME_EXCHANGE), which exchanges the two names
  atomically. Elsewhere, or on a file system without it, it is two renames: old -> `.NAME.old-...`,
  then new -> NAME. Between the two, NAME is briefly missing.
- A killed save leaves only hidden temporaries, and the next save, load or `find_trained` cleans them
  up. If NAME is missing (a kill between the two renames), the newest complete, verified temporary
  becomes NAME again; the rest are deleted. The temporaries of a process that is still running (a
  save in progress) are left alone.
- Files in the folder that a checkpoint does not write (a README, a tokenizer) are carried into the
  new folder as hard links, so replacing a checkpoint never deletes them.
- `training_state.json` records the hash of every other file. A folder whose files do not match their
  record (a file copied from another run, a truncated download) is refused with an error that says
  which file and why, instead of resuming from a silent mixture.
- The weights go through `slmbook.hf_interop`'s name mapping (`to_hf_state_dict`/`load_hf_state_dict`),
  the same one its equivalence tests check against `transformers`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from slmbook.config import QwenConfig
from slmbook.hf_interop import hf_config_kwargs, hf_moe_config_kwargs, load_hf_state_dict, to_hf_state_dict
from slmbook.qwen import QwenModel

FORMAT = "slmbook-checkpoint-1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "training_state.json"
RUNS_DIR = "runs"  # <repository or working directory>/runs/<run name>/
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE)
# .NAME.new-<pid>-<random>: a checkpoint being written; .NAME.old-<pid>-<random>: one being replaced
_TEMPORARY = re.compile(r"(new|old)-(\d+)-[a-z0-9_]+")
# what atomic_write of an older slmbook left in a checkpoint folder when a save was killed
_OLD_FILE_TEMPORARY = re.compile(r"\.(" + "|".join(re.escape(n) for n in CHECKPOINT_FILES) + r")\..+\.tmp")

# Tests stop a save at a named stage by setting this to a callable(stage) (tests/test_checkpoint_kill.py).
stage_hook = None
# Swap with renameat2(RENAME_EXCHANGE) where the system has it; tests turn it off to check the fallback.
USE_RENAME_EXCHANGE = True
_BUILDING: set[Path] = set()  # temporaries this process is writing right now (never cleaned up under it)


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete, corrupt or made for another model."""


# --- writing ----------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(file_object)` on a temporary file next to `path`, flush it to disk, rename it.

    Readers of `path` see the old content or the new content, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every OS / file system)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_config_dict(config: QwenConfig, eos_token_id: int | None = None) -> dict:
    """The Hugging Face config.json of a model of shape `config` (no `transformers` import needed):
    Qwen3 for a dense model, Qwen3-MoE for a mixture of experts (chapter 13). A model transformers has
    no class for (an MoE with shared experts, sigmoid routing, capacity or balance bias; no QK-norm)
    gets a config.json that says so instead of one that would build a different model."""
    try:
        if config.is_moe:
            values, model_type, architecture = hf_moe_config_kwargs(config), "qwen3_moe", "Qwen3MoeForCausalLM"
        else:
            values, model_type, architecture = hf_config_kwargs(config), "qwen3", "Qwen3ForCausalLM"
    except ValueError as error:
        return {"model_type": "slmbook_qwen", "architectures": [],
                "transformers_equivalent": f"none: {error}", "slmbook_config": config.to_dict()}
    theta = values.pop("rope_theta")
    values.update(
        model_type=model_type,
        architectures=[architecture],
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        rope_theta=theta,  # older transformers (4.x) read it here
        dtype=config.dtype,
        torch_dtype=config.dtype,
        use_cache=True,
    )
    if eos_token_id is not None:
        values.update(bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    return values


def save_checkpoint(folder: str | Path, model: QwenModel, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, train_config: dict | None = None, extra: dict | None = None,
                    eos_token_id: int | None = None) -> Path:
    """Write `model` (and `optimizer`, `step`, configs, `extra`) to `folder` as one unit; returns the folder.

    `train_config` and `extra` must be JSON-serialisable (history, tokens seen, tokenizer name...).
    Until the new checkpoint is complete on disk, `folder` keeps the previous one untouched.
    """
    model = unwrap(model)
    if not isinstance(model, QwenModel):
        raise TypeError(f"model={type(model).__name__}: expected a slmbook.qwen.QwenModel "
                        "(or a compiled/DDP wrapper of one)")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step={step!r}: must be an integer >= 0")
    folder = Path(folder)
    target = _real_folder(folder)
    if os.path.lexists(target) and not target.is_dir():
        raise CheckpointError(f"checkpoint folder={str(folder)!r} is a file, not a folder")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise CheckpointError(f"checkpoint folder={str(folder)!r} is (or holds) the working directory, and a save "
                              "replaces the whole folder: save into a sub-folder such as runs/<name>")
    # 1. everything that can fail before the disk is touched
    weights = {k: v.detach().to("cpu").contiguous() for k, v in to_hf_state_dict(model).items()}
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight", None)  # the same matrix as the embedding; stored once
    weights_bytes = memoryview(_safetensors_bytes(weights, {"format": "pt", "slmbook": FORMAT}))
    config_text = json.dumps(hf_config_dict(model.config, eos_token_id), indent=2) + "\n"
    state = {
        "format": FORMAT,
        "step": step,
        "model_config": model.config.to_dict(),
        "train_config": train_config or {},
        "files": {},
        **(extra or {}),
    }
    json.dumps(state, default=_json_default)  # raises on what JSON cannot hold, before any file is written
    # 2. every file into a fresh hidden sibling folder, flushed to disk
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    _stage("begin")
    new = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-{os.getpid()}-", dir=target.parent))
    _BUILDING.add(new)
    try:
        _stage("temp")
        half = len(weights_bytes) // 2
        files = {WEIGHTS_FILE: _write_new(new / WEIGHTS_FILE,
                                          lambda f: (f.write(weights_bytes[:half]), f.write(weights_bytes[half:])))}
        if optimizer is not None:
            files[OPTIMIZER_FILE] = _write_new(new / OPTIMIZER_FILE, lambda f: torch.save(optimizer.state_dict(), f))
        files[CONFIG_FILE] = _write_new(new / CONFIG_FILE, lambda f: f.write(config_text.encode()))
        state["files"] = files
        text = json.dumps(state, indent=1, default=_json_default) + "\n"
        _write_new(new / STATE_FILE, lambda f: f.write(text.encode()))
        _carry_over(target, new)
        os.chmod(new, stat.S_IMODE(target.stat().st_mode) if target.is_dir() else 0o777 & ~_umask())
        _fsync_folder(new)
        _stage("written")
        # 3. the commit point
        replaced = _swap(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)  # not committed: the previous checkpoint is still in place
        raise
    finally:
        _BUILDING.discard(new)
    _stage("swapped")
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)  # if this is killed, recover() finishes it
    return folder


def _stage(name: str) -> None:
    if stage_hook is not None:
        stage_hook(name)


class _HashingFile:
    """A write-only file object that hashes the bytes on their way to disk (no second read)."""

    def __init__(self, raw, name: str):
        self.raw, self.name, self.digest, self.started = raw, name, hashlib.sha256(), False

    def write(self, data) -> int:
        written = self.raw.write(data)
        self.digest.update(data)
        if not self.started:
            self.started = True
            _stage(f"writing {self.name}")  # part of the file is written, not all of it
        return written

    def flush(self) -> None:
        self.raw.flush()


def _write_new(path: Path, write) -> str:
    """Create `path` with `write(file_object)`, flushed to disk; returns its SHA-256."""
    with open(path, "xb") as raw:
        f = _HashingFile(raw, path.name)
        write(f)
        raw.flush()
        os.fsync(raw.fileno())
    return f.digest.hexdigest()


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into `new` whatever `old` holds that a checkpoint does not write."""
    if not old.is_dir():
        return
    for entry in os.scandir(old):
        if entry.name in CHECKPOINT_FILES or _OLD_FILE_TEMPORARY.fullmatch(entry.name):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), new / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry.path, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, new / entry.name)


def _link_or_copy(source, destination) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a file system without hard links
        shutil.copy2(source, destination)


def _swap(new: Path, target: Path) -> Path | None:
    """Put folder `new` at `target` in one step; returns where the folder it replaced now is (or None)."""
    if not os.path.lexists(target):
        os.rename(new, target)
        _fsync_folder(target.parent)
        return None
    if USE_RENAME_EXCHANGE and _rename_exchange(new, target):
        _fsync_folder(target.parent)
        return new  # that name now holds the previous checkpoint
    old = new.with_name(new.name.replace(".new-", ".old-", 1))
    os.rename(target, old)
    try:
        _stage("moved old")
        os.rename(new, target)
    except BaseException:
        if not os.path.lexists(target):
            os.rename(old, target)
        raise
    _fsync_folder(target.parent)
    return old


AT_FDCWD, RENAME_EXCHANGE = -100, 2  # from Linux's <fcntl.h> and <linux/fs.h>


def _rename_exchange(a: Path, b: Path) -> bool:
    """Exchange the names `a` and `b` in one system call (Linux >= 3.15); False where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this kernel or file system cannot do it
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


_RENAMEAT2 = []


def _renameat2():
    if not _RENAMEAT2:
        function = None
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
            except (OSError, AttributeError):  # a C library older than glibc 2.28
                function = None
        _RENAMEAT2.append(function)
    return _RENAMEAT2[0]


def _fsync_folder(folder: Path) -> None:
    """Make the names in `folder` durable (not possible on every OS / file system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _real_folder(folder: str | Path) -> Path:
    """The folder a path names, symbolic links followed: a linked run folder is replaced where it lives."""
    return Path(os.path.realpath(folder))


def recover(folder: str | Path) -> None:
    """Clean up after saves of `folder` that were killed: if the folder itself is missing (a kill between
    the two renames of a swap), the newest complete, verified temporary takes its place; the other
    temporaries are deleted. Best effort: on a read-only file system nothing changes."""
    target = _real_folder(folder)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    prefix = f".{target.name}."
    leftovers = []  # (new or old, path, whether the process that made it still runs)
    for name in names:
        match = _TEMPORARY.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
        path = target.parent / name
        if match and path not in _BUILDING:
            leftovers.append((match[1], path, _running(int(match[2]))))
    if not os.path.lexists(target):
        complete, old = [], []
        for kind, path, running in leftovers:
            if running is True:  # a save in progress; it will put the folder back itself
                continue
            try:
                _read_state(path)
                complete.append(((path / STATE_FILE).stat().st_mtime_ns, str(path)))
            except (CheckpointError, OSError):
                if kind == "old" and path.is_dir():
                    old.append((path.stat().st_mtime_ns, str(path)))
        # nothing verifies: what the swap took away was no checkpoint (an empty folder, say); put it back
        for _, best in sorted(complete or old)[-1:]:
            try:
                os.rename(best, target)
                _fsync_folder(target.parent)
            except OSError:  # another process restored it first
                pass
    for _, path, running in leftovers:
        if running is False and os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool | None:
    """Whether process `pid` still runs (its temporaries may be a save in progress); None: cannot tell
    (not POSIX), so its temporaries are never deleted, only used to put back a missing folder."""
    if pid == os.getpid():  # this process's saves in progress are in _BUILDING: the rest are leftovers
        return False
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _json_default(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# --- reading ----------------------------------------------------------------------------------------


def read_state(folder: str | Path, verify: bool = True) -> dict:
    """The `training_state.json` of a checkpoint folder, after checking that every file it records
    is present and unchanged (SHA-256). Raises CheckpointError saying what is wrong. Cleans up after
    a killed save first (`recover`)."""
    recover(folder)
    return _read_state(folder, verify)


def _read_state(folder: str | Path, verify: bool = True) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder={str(folder)!r} does not exist")
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(
            f"checkpoint folder={str(folder)!r} has no {STATE_FILE}: not an slmbook checkpoint, or its first "
            f"save was interrupted (it is written last)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_path} is corrupt: not valid JSON ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path}: format={state.get('format') if isinstance(state, dict) else None!r}, "
                              f"expected {FORMAT!r}")
    for name, digest in state.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {name} is missing")
        if verify and sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is corrupt or mixed: {name} does not match the SHA-256 recorded in "
                f"{STATE_FILE} (the file changed after the save, or a save was interrupted between files)")
    if WEIGHTS_FILE not in state.get("files", {}):
        raise CheckpointError(f"checkpoint {str(folder)!r}: {STATE_FILE} records no {WEIGHTS_FILE}")
    return state


def checkpoint_config(folder: str | Path) -> QwenConfig:
    """The model shape stored in a checkpoint."""
    return QwenConfig.from_dict(read_state(folder, verify=False)["model_config"])


def load_weights(model: QwenModel, folder: str | Path, state: dict | None = None) -> QwenModel:
    """Load the checkpoint's weights into `model`; refuses a checkpoint of another shape, naming
    every field that differs."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = unwrap(model)
    state = read_state(folder) if state is None else state
    stored = QwenConfig.from_dict(state["model_config"])
    if stored != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in stored.to_dict().items() if getattr(model.config, k) != v}
        raise CheckpointError(
            f"checkpoint {str(folder)!r} was made for another model: "
            + ", ".join(f"{k}={a!r} in the checkpoint but {b!r} in the model" for k, (a, b) in diff.items()))
    try:
        weights = load_file(str(Path(folder) / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{Path(folder) / WEIGHTS_FILE} cannot be read as safetensors: {error}") from None
    try:
        load_hf_state_dict(model, weights)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {error}") from None
    return model


def load_optimizer(optimizer: torch.optim.Optimizer, folder: str | Path, state: dict | None = None) -> None:
    """Restore AdamW's state saved with the checkpoint (moments, step counts, hyperparameters)."""
    state = read_state(folder) if state is None else state
    if OPTIMIZER_FILE not in state["files"]:
        raise CheckpointError(f"checkpoint {str(folder)!r} has no optimizer state: it was saved for inference only, "
                              "so training cannot resume from it (start a new run, or load only the weights)")
    saved = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    groups, ours = saved.get("param_groups", []), optimizer.param_groups
    if len(groups) != len(ours) or any(len(a["params"]) != len(b["params"]) for a, b in zip(groups, ours, strict=True)):
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: its optimizer has parameter groups of sizes "
            f"{[len(g['params']) for g in groups]}, this one {[len(g['params']) for g in ours]}")
    optimizer.load_state_dict(saved)


def load_model(folder: str | Path, device="cpu", attn_impl: str = "sdpa") -> QwenModel:
    """A `QwenModel` with a checkpoint's weights, in eval mode: what chapters 8, 12 and 13 load."""
    state = read_state(folder)
    model = QwenModel(QwenConfig.from_dict(state["model_config"]), attn_impl=attn_impl)
    load_weights(model, folder, state)
    return model.to(device).eval()


def unwrap(model):
    """The QwenModel inside `torch.compile` and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# --- where trained models live ----------------------------------------------------------------------


def runs_root() -> Path:
    """Folder holding run folders: $SLMBOOK_RUNS if set, else `runs/` in the repository (next to the
    package in a source checkout), else `runs/` in the working directory."""
    if os.environ.get("SLMBOOK_RUNS"):
        return Path(os.environ["SLMBOOK_RUNS"])
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / RUNS_DIR
    return Path.cwd() / RUNS_DIR


def run_dir(name: str, root: str | Path | None = None) -> Path:
    """`<root>/<name>`: where a run called `name` writes its checkpoint (e.g. runs/book)."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"name={name!r}: a run name is a non-empty folder name without '/' (e.g. 'book')")
    return Path(root if root is not None else runs_root()) / name


def find_trained(name: str = "book", root: str | Path | None = None) -> Path | None:
    """The folder of a complete, verified checkpoint of run `name` (runs/book/ by default), or None.

    Chapters 8, 12 and 13 call this to use the model trained in chapter 14 when there is one, and
    fall back to a fresh model otherwise. A folder that exists but fails verification is skipped
    with a warning rather than loaded.
    """
    folder = run_dir(name, root)
    recover(folder)
    if not (folder / STATE_FILE).is_file():
        return None
    try:
        read_state(folder)
    except CheckpointError as error:
        import warnings

        warnings.warn(f"ignoring {folder}: {error}", stacklevel=2)
        return None
    return folder


SHIPPED_MODEL = "tinystories-reader"  # slmbook/resources/models/<name>/


def shipped_model_dir(name: str = SHIPPED_MODEL) -> Path:
    """The pretrained model that ships with slmbook: our Qwen on the book's 4,096-token TinyStories
    tokenizer, trained on one GPU (benchmarks/train_reader_model.py; its provenance.md beside the
    weights says how, on what and how well). Chapters that look inside a trained model use it in
    quick mode, so a reader who opens chapter 8 first still sees one that has learned."""
    from slmbook.data import resource_path

    folder = resource_path("models", name)
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"shipped model {name!r} is missing from {folder} (a broken install?); "
                              f"reinstall slmbook or train one with benchmarks/train_reader_model.py")
    return folder


def trained_or_shipped(name: str = "book", root: str | Path | None = None) -> Path:
    """The chapter 14 checkpoint of run `name` when one exists (a chapter's full version), else the
    shipped pretrained model (quick mode)."""
    return find_trained(name, root) or shipped_model_dir()


def checkpoint_tokenizer(folder: str | Path):
    """The tokenizer a checkpoint was trained with, by the name its training state records
    (`slmbook.prepare.TOKENIZERS`); a checkpoint that records none used GPT-2's."""
    from slmbook.prepare import load_tokenizer

    return load_tokenizer(read_state(folder, verify=False).get("tokenizer") or "gpt2")


class FolderContents(NamedTuple):
    """What a would-be checkpoint folder holds (`inspect_folder`)."""

    kind: str  # 'missing', 'file', 'empty', 'checkpoint', 'weights' or 'other'
    ours: list[str]  # the checkpoint files in it (names a save writes)
    others: list[str]  # everything else, hidden names left out


def inspect_folder(folder: str | Path) -> FolderContents:
    """Whether a save may write to `folder`, for the checks a run makes before it trains: 'missing' or
    'empty' (a new run), 'checkpoint' (it holds training_state.json: an slmbook checkpoint), 'weights'
    (checkpoint files but no training_state.json: a transformers model folder, or a run whose state was
    lost, which a save would overwrite), 'other' (only files no save writes) or 'file' (not a folder).
    Finishes a killed save first (`recover`), so a folder a kill took away is seen again."""
    folder = Path(folder)
    recover(folder)
    if not os.path.lexists(folder):
        return FolderContents("missing", [], [])
    if not folder.is_dir():
        return FolderContents("file", [], [])
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    ours = [n for n in names if n in CHECKPOINT_FILES]
    others = [n for n in names if n not in CHECKPOINT_FILES]
    kind = ("checkpoint" if STATE_FILE in ours else "weights" if ours else "other" if others else "empty")
    return FolderContents(kind, ours, others)
