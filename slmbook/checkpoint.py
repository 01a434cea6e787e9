"""Checkpoints: a trained model on disk, safe to interrupt, and readable by `transformers` (chapter 14).

A checkpoint is one folder (the book's convention: `runs/<run name>/`, e.g. `runs/book/`):

    config.json           the model's shape as a Hugging Face Qwen3 (or Qwen3-MoE) config
    model.safetensors     the weights under transformers' names (the tied head stored once)
    optimizer.pt          AdamW's moments and step counters (torch.save), only for resuming
    training_state.json   step, model and training configs, history, and a SHA-256 of each file above

So the folder is at once a `transformers` model folder (`Qwen3ForCausalLM.from_pretrained(folder)`)
and a resumable training state. Why these rules:

- Every file is written atomically: to a temporary file in the same folder, flushed to disk, then
  renamed over the old one. A rename is all-or-nothing, so a run killed while saving leaves either
  the old file or the new one, never half of each.
- `training_state.json` is written last and records the hash of every other file. A folder whose
  files do not match their record (a save interrupted between two files, a file copied from another
  run, a truncated download) is refused with an error that says which file and why, instead of
  resuming from a silent mixture.
- The weights go through `slmbook.qwen`'s own name mapping (`to_hf_state_dict`/`load_hf_state_dict`),
  the same one its equivalence tests check against `transformers`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from slmbook.config import QwenConfig
from slmbook.qwen import QwenModel, hf_config_kwargs, load_hf_state_dict, to_hf_state_dict

FORMAT = "slmbook-checkpoint-1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "training_state.json"
RUNS_DIR = "runs"  # <repository or working directory>/runs/<run name>/


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
            from slmbook.moe import hf_moe_config_kwargs

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
    """Write `model` (and `optimizer`, `step`, configs, `extra`) to `folder`; returns the folder.

    `train_config` and `extra` must be JSON-serialisable (history, tokens seen, tokenizer name...).
    """
    model = unwrap(model)
    if not isinstance(model, QwenModel):
        raise TypeError(f"model={type(model).__name__}: expected a slmbook.qwen.QwenModel "
                        "(or a compiled/DDP wrapper of one)")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step={step!r}: must be an integer >= 0")
    folder = Path(folder)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in to_hf_state_dict(model).items()}
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight", None)  # the same matrix as the embedding; stored once
    files = {}
    atomic_write(folder / WEIGHTS_FILE,
                 lambda f: f.write(_safetensors_bytes(weights, {"format": "pt", "slmbook": FORMAT})))
    files[WEIGHTS_FILE] = sha256(folder / WEIGHTS_FILE)
    if optimizer is not None:
        atomic_write(folder / OPTIMIZER_FILE, lambda f: torch.save(optimizer.state_dict(), f))
        files[OPTIMIZER_FILE] = sha256(folder / OPTIMIZER_FILE)
    else:
        (folder / OPTIMIZER_FILE).unlink(missing_ok=True)
    config_text = json.dumps(hf_config_dict(model.config, eos_token_id), indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda f: f.write(config_text.encode()))
    files[CONFIG_FILE] = sha256(folder / CONFIG_FILE)
    state = {
        "format": FORMAT,
        "step": step,
        "model_config": model.config.to_dict(),
        "train_config": train_config or {},
        "files": files,
        **(extra or {}),
    }
    text = json.dumps(state, indent=1, default=_json_default) + "\n"
    atomic_write(folder / STATE_FILE, lambda f: f.write(text.encode()))  # last: it commits the others
    return folder


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
    is present and unchanged (SHA-256). Raises CheckpointError saying what is wrong."""
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
    if len(groups) != len(ours) or any(len(a["params"]) != len(b["params"]) for a, b in zip(groups, ours)):
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
    if not (folder / STATE_FILE).is_file():
        return None
    try:
        read_state(folder)
    except CheckpointError as error:
        import warnings

        warnings.warn(f"ignoring {folder}: {error}", stacklevel=2)
        return None
    return folder
