"""The training command line behind `python -m slmbook.train`: arguments, data, safe outputs, the run.

It drives the same `slmbook.training.Trainer` the notebooks call (chapter 14):

    python -m slmbook.train --config tiny                         # CPU, shipped sample, minutes
    python -m slmbook.train --config reader                       # CPU, the reader's model, about a minute
    python -m slmbook.train --config book --device cuda           # chapter 14's run on one GPU
    python -m slmbook.train --config book --steps 500 --batch-size 32 --grad-accum 2 --out runs/try
    torchrun --nproc_per_node 4 -m slmbook.train --config book    # data-parallel on 4 GPUs

Data: `--data DIR` holds train.bin and validation.bin made by `slmbook.dataloader`
(`benchmarks/prepare_tinystories.py` writes them to .data/tinystories). Without --data the run uses
.data/tinystories when it exists and otherwise tokenizes the TinyStories sample shipped with the
package into .data/sample (the `reader` presets: in the book's TinyStories tokenizer,
`PRESET_TOKENIZERS`). The checkpoint goes to --out (default runs/<config>); running the same
command again resumes from it (use --fresh to start over). Before training starts, the command refuses
outputs it could not write or that would overwrite what it did not write: an --out that is a file, or a
folder that is not a run folder (a model folder with weights but no training_state.json needs --fresh,
and even then only the checkpoint's own files are replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from slmbook.checkpoint import STATE_FILE, atomic_write, inspect_folder, run_dir
from slmbook.config import PRESETS as MODEL_PRESETS
from slmbook.config import preset
from slmbook.distributed import process_gpu
from slmbook.env import PRECISIONS
from slmbook.training import Trainer
from slmbook.training_config import PRESETS, TrainConfig, training_preset

DATA_DIR = ".data"


def repo_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


# The tokenizer of a preset's data, by --model or else --config name; every other preset reads GPT-2 ids.
PRESET_TOKENIZERS = {"reader": "tinystories-4k", "reader-gpu": "tinystories-4k"}


def preset_tokenizer(args: argparse.Namespace) -> str:
    return PRESET_TOKENIZERS.get(args.model or args.config, "gpt2")


def default_data(progress: bool = True, tokenizer: str = "gpt2") -> Path:
    """The TinyStories prepared by `python -m slmbook.prepare` in the data home (`slmbook.prepare.data_home`),
    else the shipped sample tokenized (once) into <data home>/tinystories/sample-<tokenizer>."""
    from slmbook.prepare import data_home, find_prepared

    return find_prepared(tokenizer) or sample_data(data_home() / "tinystories" / f"sample-{tokenizer}",
                                                   progress=progress, tokenizer=tokenizer)


def sample_data(folder: str | Path, progress: bool = False, tokenizer: str = "gpt2") -> Path:
    """The TinyStories sample shipped with slmbook as token files of `tokenizer` (a name in
    `slmbook.prepare.TOKENIZERS`) in `folder`, made once: train.bin from the train head, validation.bin
    from the 1,000 official validation stories. `tokenizer="tinystories-4k"` is the reader preset's data."""
    from slmbook.data import SAMPLE_FILES, resource_path
    from slmbook.dataloader import prepare_token_files
    from slmbook.prepare import load_tokenizer

    encoding = load_tokenizer(tokenizer)
    folder = Path(folder)
    if not _holds_tokens(folder, encoding):
        prepare_token_files([resource_path("tinystories", SAMPLE_FILES["train"])], encoding, folder,
                            validation=[resource_path("tinystories", SAMPLE_FILES["validation"])], progress=progress)
    return folder


def _holds_tokens(folder: Path, encoding) -> bool:
    """True if `folder` has train.bin and validation.bin written with `encoding` (same name and size)."""
    from slmbook.dataloader import read_token_file

    for name in ("train.bin", "validation.bin"):
        try:
            info = read_token_file(folder / name)[1]
        except (FileNotFoundError, ValueError):
            return False
        if (info.encoding, info.n_vocab) != (encoding.name, encoding.n_vocab):
            return False
    return True


def data_files(folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    train, val = folder / "train.bin", folder / "validation.bin"
    for path in (train, val):
        if not path.is_file():
            raise ValueError(f"--data={str(folder)!r} has no {path.name}: prepare it with "
                             f"`python benchmarks/prepare_tinystories.py --out {folder}`")
    return train, val


def encoding_of(path: Path):
    """The tokenizer a token file was written with, if its name is in `slmbook.prepare.TOKENIZERS`."""
    from slmbook.dataloader import read_token_file
    from slmbook.prepare import TOKENIZERS, load_tokenizer

    _, info = read_token_file(path)
    return load_tokenizer(info.encoding) if info.encoding in TOKENIZERS else None


def build_parser() -> argparse.ArgumentParser:
    first, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m slmbook.train", description=first, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help=f"training preset, one of {sorted(PRESETS)} (default tiny)")
    p.add_argument("--model", help=f"model shape preset instead of the config's, one of {sorted(MODEL_PRESETS)}")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step, over all processes")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step in each process")
    p.add_argument("--context", type=int, help="tokens per training sequence")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    p.add_argument("--precision", help=f"one of {PRECISIONS}")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--attn-impl", help="sdpa or manual")
    p.add_argument("--loss-chunk", type=int, help="fused output head + loss, this many tokens at a time (0 = off)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int)
    p.add_argument("--log-interval", type=int)
    p.add_argument("--eval-interval", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--checkpoint-interval", type=int)
    p.add_argument("--save-best", action=argparse.BooleanOptionalAction, default=None,
                   help="checkpoint only when the validation loss improves (the book preset does)")
    p.add_argument("--sample-tokens", type=int)
    p.add_argument("--data", help="folder with train.bin and validation.bin (default: see above)")
    p.add_argument("--out", help="checkpoint folder (default runs/<config>)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new run even if --out holds a checkpoint (replaced at the first save)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary-json", help="also write the final summary to this JSON file")
    return p


OVERRIDES = ("steps", "batch_size", "grad_accum", "context", "lr", "warmup_steps", "weight_decay", "grad_clip",
             "precision", "compile", "compile_mode", "attn_impl", "loss_chunk", "device", "seed", "log_interval",
             "eval_interval", "eval_batches", "checkpoint_interval", "save_best", "sample_tokens")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset named by --config with the command line's overrides applied (all checked)."""
    config = training_preset(args.config)
    changes = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    if args.model:
        model = preset(args.model)
        changes["model"] = model
        changes.setdefault("context", min(config.context, model.context_length))
    return config.replace(**changes)


RUN_FOLDERS = f"allowed: a new folder, an empty one, or a run folder of slmbook.train (it holds {STATE_FILE})"


def check_outputs(out: Path, fresh: bool = False, summary_json: str | None = None) -> list[str]:
    """Refuse, before any training, an output that would overwrite what this command did not write or
    that could not be written once the run is over. Returns notes on what --fresh will replace."""
    found = inspect_folder(out)  # also finishes a save that a kill interrupted
    if found.kind == "file":
        raise ValueError(f"--out={str(out)!r} is a file, not a folder; {RUN_FOLDERS}")
    if found.kind == "other":
        raise ValueError(f"--out={str(out)!r} holds {_names(found.others)} and no {STATE_FILE}: it is not a run "
                         f"folder, and slmbook.train writes only into its own; {RUN_FOLDERS}")
    notes = []
    ours = ", ".join(found.ours)
    if found.kind == "weights" and not fresh:
        raise ValueError(f"--out={str(out)!r} holds {ours} but no {STATE_FILE}: a model folder (from transformers, "
                         f"say) or a run whose state was lost, and training would overwrite it. Use another --out, "
                         f"or --fresh to replace {ours} (other files there are kept)")
    if found.kind == "weights":
        notes.append(f"--fresh: {ours} in {out} will be replaced at the first save"
                     + (f"; kept: {_names(found.others)}" if found.others else ""))
    elif found.kind == "checkpoint" and fresh:
        notes.append(f"--fresh: the checkpoint in {out} will be replaced at the first save"
                     + (f"; kept: {_names(found.others)}" if found.others else ""))
    real, cwd = Path(os.path.realpath(out)), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ValueError(f"--out={str(out)!r} is (or holds) the working directory, and a checkpoint replaces its "
                         f"whole folder; give a sub-folder, e.g. runs/<name>")
    _check_writable(real, "--out")  # a save writes a sibling folder next to it
    if summary_json is not None:
        path = Path(summary_json)
        if path.is_dir():
            raise ValueError(f"--summary-json={summary_json!r} is a folder; give a file name, e.g. "
                             f"{str(path / 'summary.json')!r}")
        if os.path.realpath(path) == os.path.realpath(out):
            raise ValueError(f"--summary-json={summary_json!r} is the --out folder; give a file name of its own")
        _check_writable(path, "--summary-json")
        if path.exists() and not os.access(path, os.W_OK):
            raise ValueError(f"--summary-json={summary_json!r} exists and is read-only")
    return notes


def _check_writable(path: Path, flag: str) -> None:
    """Refuse a path whose folder can neither be found nor made, or not written to."""
    folder = path.absolute().parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag}={str(path)!r}: {str(folder)!r} is a file, so no folder can be made inside it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}={str(path)!r}: no permission to write in {str(folder)!r}")


def _names(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        config = config_from_args(args)
        out = Path(args.out) if args.out else run_dir(args.config)
        notes = check_outputs(out, args.fresh, args.summary_json)  # before any work that could be lost
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if rank == 0:
        for note in notes:
            print(note, flush=True)
    if world_size > 1:
        import torch.distributed as dist

        use_nccl = process_gpu(config.device) is not None  # one GPU per process, before NCCL's first collective
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    try:
        try:
            folder = Path(args.data) if args.data else (default_data(rank == 0, preset_tokenizer(args)) if rank == 0 else None)
            if world_size > 1 and not args.data:  # rank 0 prepared the default data; the others wait
                import torch.distributed as dist

                shared = [str(folder) if rank == 0 else None]
                dist.broadcast_object_list(shared, src=0)
                folder = Path(shared[0])
            train, val = data_files(folder)
            trainer = Trainer(config, train, val, encoding=encoding_of(train), out=out, resume=not args.fresh,
                              progress=not args.no_progress)
            if args.summary_json and trainer.is_main:
                Path(args.summary_json).absolute().parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, TypeError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if trainer.is_main:
            start = f", resuming at step {trainer.step}" if trainer.step else ""
            print(f"training {config.model.n_layers}-layer dim-{config.model.dim} model "
                  f"({trainer.model.num_parameters():,} parameters) for {config.steps} steps of "
                  f"{config.tokens_per_step:,} tokens on {trainer.device} x {trainer.world_size}{start}; "
                  f"data {folder}; checkpoint {out}", flush=True)
        began = time.perf_counter()
        history = trainer.run()
        if trainer.is_main:
            summary = summarize(trainer, history, time.perf_counter() - began)
            print(json.dumps(summary, indent=1))
            if args.summary_json:
                text = json.dumps(summary, indent=1) + "\n"
                atomic_write(args.summary_json, lambda f: f.write(text.encode()))
    finally:
        if world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def summarize(trainer: Trainer, history, seconds: float) -> dict:
    """The numbers a run ends with: final losses, throughput, tokens and epochs, a sample."""
    last = history.train[-1] if history.train else {}
    final = history.eval[-1] if history.eval else {}
    rates = [row["tokens_per_s"] for row in history.train[1:]] or [last.get("tokens_per_s")]
    return {
        "steps": trainer.step,
        "train_loss": last.get("loss"),
        "val_loss": final.get("val_loss"),
        "val_bpb": final.get("val_bpb"),
        "tokens_seen": trainer.step * trainer.config.tokens_per_step,
        "epochs": trainer.train_data.epochs(trainer.step),
        "tokens_per_s_median": sorted(rates)[len(rates) // 2] if None not in rates else None,
        "wall_seconds_this_run": seconds,
        "sample": history.samples[-1]["text"] if history.samples else None,
        "checkpoint": str(trainer.out) if trainer.out else None,
    }


if __name__ == "__main__":
    sys.exit(main())
