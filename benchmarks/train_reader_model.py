"""The reader's pretrained model: our Qwen on the book's TinyStories tokenizer, trained on one GPU.

    python benchmarks/train_reader_model.py --stories DIR --out OUT                        # one GPU, minutes
    python benchmarks/train_reader_model.py --stories DIR --out OUT --variants base,short  # the best of several
    python benchmarks/train_reader_model.py --smoke --out OUT                              # CPU, seconds: does it run?

DIR is a folder of TinyStories .txt files (each story followed by a line <|endoftext|>); OUT gets:

1. OUT/data: `slmbook.prepare` tokenizes DIR with the `tinystories-4k` tokenizer. Every .txt but the
   official validation stories (tinystories-valid-v1-head1000.txt) is training data; stories are
   normalized, exact and near-duplicates removed, and training stories equal or near to a validation
   story dropped, so the 1,000 validation stories are never trained on.
2. OUT/runs/<variant>: each variant is the `reader-gpu` training preset (slmbook.training.PRESETS) with
   the changes in `VARIANTS`, trained by slmbook.training.Trainer (bf16, torch.compile with CUDA graphs),
   evaluated on all validation stories every eval_interval steps, keeping only the checkpoint of the
   best validation loss (on ~5 M training tokens the model starts memorising after a few epochs).
3. OUT/model: the best variant's best checkpoint with bfloat16 weights (the shipped file stays under
   10 MB) and no optimizer state, evaluated again on the CPU in float32 after
   `slmbook.checkpoint.load_model`, next to provenance.json and provenance.md: the command, the data
   files and token counts, steps, hardware, validation bits per byte, time and sample stories. A full
   run also writes them to benchmarks/results/reader_model.{json,md} (--results).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a source checkout without an install

from slmbook.config import READER, READER_GPU  # noqa: E402
from slmbook.training import Trainer  # noqa: E402
from slmbook.training_config import TrainConfig, training_preset  # noqa: E402

PRESET = "reader-gpu"
PROMPTS = ("Once upon a time", "One day, a little girl named Lily", "Tom and his dog")
# name -> changes to the reader-gpu preset (2,500 steps of 32 x 512 tokens, lr 2e-3 cosine to 0, weight decay
# 1.0: "base", the recipe of the shipped model). Every other variant names all five of those fields, so it
# means what it meant when it was run. Each keeps the exported weights under 10 MB in bfloat16.
_OLD = {"steps": 3000, "batch_size": 64, "context": 256, "min_lr_ratio": 0.1, "weight_decay": 0.1}
VARIANTS = {
    "base": {},
    # the first recipe (0.758 bits per byte, best at 6.7 epochs, then the validation loss rises) and its variations
    "v1": _OLD,
    "short": {**_OLD, "steps": 2000},  # a shorter cosine: the learning rate is low before the model memorises
    "ctx512": {**_OLD, "batch_size": 32, "context": 512},  # the same tokens per step in longer windows
    "6-layers": {**_OLD, "model": READER_GPU.replace(n_layers=6, hidden_dim=512)},  # deeper, narrower feed-forward
    "lr1e-3": {**_OLD, "lr": 1e-3},
    # memorising stops them, so: end the cosine at zero where the best checkpoint was, decay the weights harder
    "short-zero": {**_OLD, "steps": 2000, "min_lr_ratio": 0.0},
    "wd0.5": {**_OLD, "steps": 2000, "min_lr_ratio": 0.0, "weight_decay": 0.5},
    "ctx512-wd0.5": {"batch_size": 32, "context": 512, "steps": 2000, "min_lr_ratio": 0.0, "weight_decay": 0.5},
    "wd1": {**_OLD, "steps": 2500, "min_lr_ratio": 0.0, "weight_decay": 1.0},
    "ctx512-wd1": {"batch_size": 32, "context": 512, "steps": 2500, "min_lr_ratio": 0.0, "weight_decay": 1.0},
}
SMOKE = dict(model=READER.replace(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, context_length=64),
             steps=6, batch_size=4, context=64, warmup_steps=2, compile=False, log_interval=2, eval_interval=3,
             eval_batches=2, sample_tokens=0)
EXPORT_DTYPE = "bfloat16"
MAX_EXPORT_MB = 10.0


def variant_config(name: str, smoke: bool, device: str) -> TrainConfig:
    """The reader-gpu preset with the variant's changes (with --smoke: in a tiny model, a few steps)."""
    config = training_preset(PRESET).replace(**VARIANTS[name], device=device)
    return config.replace(**SMOKE) if smoke else config


def prepare_data(stories: Path | None, folder: Path, smoke: bool) -> dict:
    """Token files of `stories` (None = the stories shipped with slmbook) in `folder`; returns the report."""
    from slmbook.prepare import ensure_data, read_report
    from slmbook.tinystories_tokenizer import TOKENIZER_NAME

    ensure_data("local", stories, TOKENIZER_NAME, near_threshold=None if smoke else "auto",
                limit=300 if smoke else None, out=folder, progress=not smoke)
    return read_report(folder)


def cpu_bits_per_byte(folder: Path, train: Path, val: Path, config: TrainConfig, encoding) -> dict:
    """Validation loss and bits per byte of the checkpoint in `folder` as a reader gets it: loaded with
    load_model, float32 on the CPU; every validation window (config.eval_batches = 0) or the first few."""
    from slmbook.checkpoint import load_model

    model = load_model(folder, device="cpu").float()
    evaluator = Trainer(config.replace(device="cpu", compile=False, precision="fp32"), train, val,
                        encoding=encoding, progress=False, model=model)
    return evaluator, evaluator.evaluate()


def export(trainer: Trainer, best_step: int, folder: Path) -> Path:
    """The trainer's model (holding its best weights) saved for inference: bfloat16, no optimizer state."""
    from slmbook.checkpoint import WEIGHTS_FILE, save_checkpoint
    from slmbook.hf_interop import load_hf_state_dict, to_hf_state_dict
    from slmbook.qwen import QwenModel

    small = QwenModel(trainer.config.model.replace(dtype=EXPORT_DTYPE))
    load_hf_state_dict(small, to_hf_state_dict(trainer.model))
    save_checkpoint(folder, small, None, best_step, trainer.config.to_dict(),
                    extra={"tokenizer": trainer.encoding.name, "history": trainer.history.to_dict()},
                    eos_token_id=trainer.encoding.eot_token)
    return folder / WEIGHTS_FILE


def hardware(device: torch.device) -> dict:
    from slmbook.hardware import cpu_name

    info = {"device": str(device), "cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def report(summary: dict) -> str:
    chosen = summary["chosen"]
    exported = summary["exported"]
    hw = summary["hardware"]
    data = summary["data"]
    lines = [
        "# The reader's pretrained model" + (" (smoke run)" if summary["smoke"] else ""),
        "",
        f"- command: `{summary['command']}`",
        f"- hardware: {hw.get('gpu', hw['cpu'])} ({hw['device']}); torch {hw['torch']}, Python {hw['python']}",
        f"- tokenizer: `{summary['tokenizer']}` ({summary['vocab_size']:,} tokens, slmbook/resources/tokenizers/)",
        f"- data: {data['stories']['train']:,} training stories ({data['tokens']['train']:,} tokens) from "
        f"{len(data['request']['files']) - 1} file(s); {data['stories']['validation']:,} validation stories "
        f"({data['tokens']['validation']:,} tokens); removed {data['exact_duplicates_removed']:,} exact and "
        f"{data['near_duplicates_removed']:,} near-duplicates and {data['validation_overlap_removed']:,} training "
        f"stories equal or near to a validation story",
        f"- total time: {summary['total_s']:.0f} s (data {data['seconds']['total']:.0f} s)",
        "",
        "| variant | changes | parameters | steps | best step | epochs at best | best val bpb | final val bpb "
        "| tokens/s | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["variants"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['changes']} | | | | | skipped: {r['skipped']} | | | |")
            continue
        lines.append(f"| {r['name']} | {r['changes']} | {r['parameters']:,} | {r['steps']:,} | {r['best_step']:,} "
                     f"| {r['best_epoch']:.1f} | {r['best_val_bpb']:.4f} | {r['final_val_bpb']:.4f} "
                     f"| {r['tokens_per_s_median']:,.0f} | {r['wall_s']:.0f} |")
    lines += [
        "",
        f"Chosen: **{chosen}**. Exported (bfloat16 weights, no optimizer state): {exported['weights_mb']:.2f} MB; "
        f"loaded with `load_model` and evaluated in float32 on the CPU over "
        f"{'a few validation windows' if summary['smoke'] else 'all validation stories'}: "
        f"**{exported['val_bpb']:.4f} bits per byte** ({exported['val_loss']:.4f} nats per token).",
        "",
        "Samples of the exported model (temperature 0.8, top-k 50, seeds 0-2):",
        "",
    ]
    lines += [f"> {s}".replace("\n", " ") + "\n" for s in exported["samples"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python benchmarks/train_reader_model.py", description=first, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stories", help="folder of TinyStories .txt files (default: the stories shipped with slmbook)")
    p.add_argument("--out", required=True, help="folder for data/, runs/<variant>/ and model/")
    p.add_argument("--variants", default="base", help=f"comma-separated, from {list(VARIANTS)} (default base)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny model for a few steps on 300 shipped stories (CPU, seconds)")
    p.add_argument("--time-budget", type=float, default=540, help="seconds; a variant that would not fit is skipped")
    p.add_argument("--results",
                   help="also write reader_model.{json,md} here (default: benchmarks/results for a full run)")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        p.error(f"--variants={args.variants!r}: unknown {unknown}; allowed: {list(VARIANTS)}")
    stories = Path(args.stories) if args.stories else None
    if stories is not None and not stories.is_dir():
        p.error(f"--stories={args.stories!r} is not a folder of TinyStories .txt files")
    began = time.perf_counter()

    from slmbook import checkpoint
    from slmbook.data import command_line
    from slmbook.tinystories_tokenizer import tinystories_encoding
    from slmbook.train_cli import data_files, summarize

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    data = prepare_data(stories, out / "data", args.smoke)
    train, val = data_files(out / "data")
    encoding = tinystories_encoding()
    print(f"data: {data['stories']['train']:,} training stories, {data['tokens']['train']:,} tokens; "
          f"{data['stories']['validation']:,} validation stories ({data['seconds']['total']:.0f} s)", flush=True)

    results, best = [], None
    for name in names:
        elapsed = time.perf_counter() - began
        done = [r for r in results if "wall_s" in r]
        if done and elapsed + 1.1 * max(r["wall_s"] for r in done) > args.time_budget:
            results.append({"name": name, "changes": VARIANTS[name], "skipped": f"time budget ({elapsed:.0f} s used)"})
            print(f"skipping {name}: {elapsed:.0f} s of the {args.time_budget:.0f} s budget used", flush=True)
            continue
        config = variant_config(name, args.smoke, device)
        run_out = out / "runs" / name
        print(f"\n== {name}: {config.model.n_layers} layers, dim {config.model.dim}, {config.steps:,} steps of "
              f"{config.batch_size} x {config.context} tokens, lr {config.lr:g} -> {run_out}", flush=True)
        start = time.perf_counter()
        trainer = Trainer(config, train, val, encoding=encoding, out=run_out, resume=False, progress=not args.smoke)
        history = trainer.run()
        wall = time.perf_counter() - start
        row = min(history.eval, key=lambda r: r["val_loss"])
        run_summary = summarize(trainer, history, wall)
        result = {
            "name": name,
            "changes": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in VARIANTS[name].items()},
            "config": config.to_dict(), "parameters": trainer.model.num_parameters(), "steps": config.steps,
            "best_step": row["step"], "best_epoch": trainer.train_data.epochs(row["step"]),
            "best_val_loss": row["val_loss"], "best_val_bpb": row["val_bpb"],
            "final_val_bpb": history.eval[-1]["val_bpb"], "tokens_per_s_median": run_summary["tokens_per_s_median"],
            "wall_s": wall, "eval": history.eval,
        }
        results.append(result)
        print(f"{name}: best {row['val_bpb']:.4f} bits/byte at step {row['step']} (epoch {result['best_epoch']:.1f}), "
              f"final {result['final_val_bpb']:.4f}; {wall:.0f} s", flush=True)
        if best is None or result["best_val_bpb"] < best[0]["best_val_bpb"]:
            checkpoint.load_weights(trainer.model, run_out)  # its best checkpoint
            weights = export(trainer, row["step"], out / "model")
            best = (result, weights)
        del trainer
        if device.startswith("cuda"):
            torch._dynamo.reset()
            torch.cuda.empty_cache()

    result, weights = best
    evaluator, final = cpu_bits_per_byte(out / "model", train, val, variant_config(result["name"], args.smoke, device),
                                         encoding)
    samples = [evaluator.sample(24 if args.smoke else 200, seed=i, prompt=prompt) for i, prompt in enumerate(PROMPTS)]
    weights_mb = weights.stat().st_size / 1e6
    summary = {
        "smoke": args.smoke, "hardware": hardware(torch.device(device)),
        "command": command_line("benchmarks/train_reader_model.py", argv, ("--stories", "--out", "--results")),
        "tokenizer": encoding.name, "vocab_size": encoding.n_vocab, "data": data, "variants": results,
        "chosen": result["name"],
        "exported": {"folder": "model", "dtype": EXPORT_DTYPE, "weights_mb": weights_mb, "step": result["best_step"],
                     "val_loss": final["val_loss"], "val_bpb": final["val_bpb"], "samples": samples},
        "total_s": time.perf_counter() - began,
    }
    if weights_mb > MAX_EXPORT_MB:
        print(f"warning: the exported weights take {weights_mb:.1f} MB, more than the {MAX_EXPORT_MB} MB the "
              "package may ship", file=sys.stderr)
    text = report(summary)
    for folder, stem in [(out / "model", "provenance")] + (
            [(Path(args.results) if args.results else REPO / "benchmarks" / "results", "reader_model")]
            if args.results or not args.smoke else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
        (folder / f"{stem}.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
