"""Chapter 14's quality run: our Qwen trained on deduplicated TinyStories on one GPU, in minutes.

    python -m slmbook.prepare --stories-dir FOLDER      # once: <data home>/tinystories/local-gpt2/*.bin
    python benchmarks/train_tinystories_gpu.py          # one GPU, about 8 minutes on an H200 for all four runs
    python benchmarks/train_tinystories_gpu.py --runs large --add   # a run left out for time, added to the table
    python benchmarks/train_tinystories_gpu.py --smoke  # CPU, tiny model, under a minute: does it run?

What limits the loss? The same number of optimizer steps (the same compute per model) is spent on
  - book:         the book's model (dim 512, 8 layers, GQA 8/4 heads, 51 M parameters with the
                  embedding) on all training stories: the main run, saved to runs/book/;
  - book-25%:     the same model on a quarter of the stories (4x more epochs);
  - small:        a model with half the width and layers (dim 256, 4 layers) on all stories;
  - large:        a model with 1.5x the width and layers (dim 768, 12 layers, 121 M parameters).
If the quarter-data run ends far worse while the small and large models end close to the book model,
data is what limits the loss, not model size; the validation curve turning up (memorising the
training stories) says the same.

Each run evaluates on all 1,000 official validation stories (never trained on: prepare_tinystories
removes them and their near-copies from training) every half epoch and keeps the checkpoint of the
best validation loss. Reported per run: validation loss (nats per token), bits per byte, tokens
seen, epochs, throughput and MFU, wall time, and sample stories from the best checkpoint. Writes
benchmarks/results/training_tinystories.{md,json,png} (…_smoke.* with --smoke) and runs/<name>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slmbook.config import BOOK, TINY, QwenConfig  # noqa: E402
from slmbook.data import command_line  # noqa: E402
from slmbook.memory import parameter_count  # noqa: E402
from slmbook.training import Trainer  # noqa: E402
from slmbook.training_config import TrainConfig, training_preset  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PROMPTS = ("Once upon a time", "One day, a little girl named Lily", "Tom and his dog")
SMALL = BOOK.replace(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=768)
LARGE = BOOK.replace(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, hidden_dim=2304)


@dataclass(frozen=True)
class Run:
    name: str
    model: QwenConfig
    data_fraction: float


FULL_RUNS = (Run("book", BOOK, 1.0), Run("book-25%", BOOK, 0.25), Run("small", SMALL, 1.0), Run("large", LARGE, 1.0))
SMOKE_RUNS = (Run("tiny", TINY, 1.0), Run("tiny-25%", TINY, 0.25))


def subset(train: Path, fraction: float, folder: Path) -> Path:
    """The first `fraction` of a token file's stories (cut after an end-of-text), as a token file."""
    from slmbook.dataloader import TokenFileInfo, read_token_file

    if fraction == 1.0:
        return train
    tokens, info = read_token_file(train)
    ends = np.flatnonzero(np.asarray(tokens) == info.eot_token)
    cut = int(ends[np.searchsorted(ends, int(fraction * len(tokens)))]) + 1
    path = folder / f"train-{round(100 * fraction)}pct.bin"
    np.asarray(tokens[:cut]).tofile(path)
    stories = int(np.searchsorted(ends, cut - 1)) + 1
    sub = TokenFileInfo(str(path), info.dtype, cut, stories, round(info.n_bytes * cut / len(tokens)),
                        info.encoding, info.eot_token, info.n_vocab)
    path.with_suffix(".json").write_text(json.dumps(asdict(sub), indent=1))
    return path


def shown(path) -> str:
    """A path as results files show it: relative to the repository, else its last part (no machine's folders)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def run_config(run: Run, smoke: bool, device: str, steps: int, eval_interval: int) -> TrainConfig:
    if smoke:
        return TrainConfig(model=run.model, steps=steps, batch_size=4, context=64, lr=3e-3, warmup_steps=min(2, steps),
                           device=device, log_interval=2, eval_interval=eval_interval, eval_batches=2,
                           sample_tokens=0, save_best=True)
    # the "book" preset of slmbook.training (batch 32 x 512, lr 1e-3, best checkpoint kept), run by run
    book = training_preset("book")
    return book.replace(model=run.model, steps=steps, warmup_steps=min(book.warmup_steps, steps), device=device,
                        compile=device != "cpu", eval_interval=eval_interval, sample_tokens=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the shipped sample, on the CPU, < 1 minute")
    p.add_argument("--data", default=None, help="folder with train.bin and validation.bin (default: what python -m slmbook.prepare made)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--epochs", type=float, default=None, help="epochs of the full data per run (default 8; smoke: 8 steps)")
    p.add_argument("--runs", default=None, help="comma-separated subset of the run names")
    p.add_argument("--time-budget", type=float, default=510, help="seconds; a run that would not fit is skipped")
    p.add_argument("--runs-dir", default=None, help="checkpoints go to <runs-dir>/<name> (default runs/, runs/smoke/)")
    p.add_argument("--add", action="store_true",
                   help="keep the other runs of the existing results file (same data, device and steps): "
                        "one table of runs measured over several calls")
    args = p.parse_args(argv)
    began = time.perf_counter()

    from slmbook import checkpoint
    from slmbook.dataloader import read_token_file
    from slmbook.hardware import describe_device
    from slmbook.tokenizer import gpt2_encoding
    from slmbook.train_cli import data_files, sample_data, summarize

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    runs = SMOKE_RUNS if args.smoke else FULL_RUNS
    if args.runs:
        wanted = [r.strip() for r in args.runs.split(",")]
        unknown = sorted(set(wanted) - {r.name for r in runs})
        if unknown:
            p.error(f"--runs: {unknown} unknown; allowed: {[r.name for r in runs]}")
        runs = tuple(r for r in runs if r.name in wanted)
    if args.data:
        folder = Path(args.data)
    elif args.smoke:
        folder = sample_data(REPO / ".data" / "sample")
    else:
        from slmbook.prepare import data_dir, find_prepared

        folder = find_prepared() or data_dir("local")
    try:
        train, val = data_files(folder)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs_dir = Path(args.runs_dir) if args.runs_dir else REPO / "runs" / ("smoke" if args.smoke else "")
    work = REPO / ".data" / "subsets"
    work.mkdir(parents=True, exist_ok=True)
    encoding = gpt2_encoding()
    tokens, info = read_token_file(train)
    hw = describe_device(device)
    hw.pop("peak", None)
    print(f"data: {info.n_stories:,} training stories, {info.n_tokens:,} tokens ({folder}); device {hw['name']} ({device})",
          flush=True)

    # The same number of steps for every run: `epochs` passes over the full data with the first config.
    first = run_config(runs[0], args.smoke, device, 1, 1)
    windows = (info.n_tokens - 1) // first.context
    steps = 8 if args.smoke and args.epochs is None else max(1, round((args.epochs or 8) * windows / first.batch_size))
    this_call = command_line("benchmarks/train_tinystories_gpu.py", argv if argv is not None else sys.argv[1:],
                             ("--data", "--runs-dir"))
    earlier = {"runs": [], "commands": [], "total_wall_s": 0.0}
    if args.add:
        try:
            earlier = earlier_results(args.smoke, info, hw, steps)
        except ValueError as error:
            print(f"error: --add: {error}", file=sys.stderr)
            return 2
    calls = {"earlier": earlier, "command": this_call}
    results = []
    for run in runs:
        elapsed = time.perf_counter() - began
        done = [r for r in results if "wall_s" in r]  # same steps: a run's time grows with its parameters
        expected = max((r["wall_s"] / r["parameters"] for r in done), default=0) * parameter_count(run.model)
        if done and elapsed + 1.1 * expected > args.time_budget:
            print(f"skipping {run.name}: {elapsed:.0f} s used of the {args.time_budget:.0f} s budget", flush=True)
            results.append({"name": run.name, "skipped": f"time budget ({elapsed:.0f} s used)"})
            continue
        data = subset(train, run.data_fraction, work)
        train_tokens = read_token_file(data)[1].n_tokens
        n_windows = (train_tokens - 1) // first.context
        eval_interval = max(1, steps // 2) if args.smoke else max(1, n_windows // first.batch_size // 2)
        config = run_config(run, args.smoke, device, steps, eval_interval)
        out = checkpoint.run_dir(run.name.replace("%", "pct"), runs_dir)
        print(f"\n== {run.name}: {config.model.n_layers} layers, dim {config.model.dim}, {run.data_fraction:.0%} of the data, "
              f"{steps} steps of {config.tokens_per_step:,} tokens -> {out}", flush=True)
        start = time.perf_counter()
        trainer = Trainer(config, data, val, encoding=encoding, out=out, progress=True)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        history = trainer.run()
        wall = time.perf_counter() - start
        best = min(history.eval, key=lambda r: r["val_loss"])
        checkpoint.load_weights(trainer.model, out)  # the best checkpoint
        samples = [trainer.sample(24 if args.smoke else 200, seed=i, prompt=prompt)
                   for i, prompt in enumerate(PROMPTS[: 1 if args.smoke else 3])]
        run_summary = summarize(trainer, history, wall)
        mfus = sorted(r["mfu"] for r in history.train[1:] if r["mfu"] is not None)
        result = {
            "name": run.name, "data_fraction": run.data_fraction, "model": config.model.to_dict(),
            "parameters": trainer.model.num_parameters(), "train_tokens": train_tokens,
            "steps": steps, "batch_size": config.batch_size, "context": config.context,
            "tokens_seen": run_summary["tokens_seen"], "epochs": run_summary["epochs"],
            "best_val_loss": best["val_loss"], "best_val_bpb": best.get("val_bpb"), "best_step": best["step"],
            "best_epoch": trainer.train_data.epochs(best["step"]),
            "final_val_loss": run_summary["val_loss"], "final_train_loss": run_summary["train_loss"],
            "tokens_per_s_median": run_summary["tokens_per_s_median"], "mfu_median": mfus[len(mfus) // 2] if mfus else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(trainer.device) / 2**30 if trainer.device.type == "cuda" else None,
            "wall_s": wall, "checkpoint": shown(out), "samples": samples,
            "history": history.to_dict(),
        }
        results.append(result)
        write_results(results, args.smoke, hw, folder, info, val, time.perf_counter() - began, calls)  # kept if a later run dies
        print(f"best val loss {best['val_loss']:.3f} nats/token ({best.get('val_bpb', float('nan')):.3f} bits/byte) at epoch "
              f"{result['best_epoch']:.1f}; final {result['final_val_loss']:.3f}; {wall:.0f} s; "
              f"{result['tokens_per_s_median']:,.0f} tokens/s", flush=True)
        print(f"sample: {samples[0]!r}", flush=True)
        del trainer
        if device.startswith("cuda"):
            torch._dynamo.reset()
            torch.cuda.empty_cache()

    total = time.perf_counter() - began
    stem = write_results(results, args.smoke, hw, folder, info, val, total, calls)
    print(f"\n{stem.with_suffix('.md').read_text()}\nwrote {stem}.md/.json/.png in {total:.0f} s total")
    return 0


def results_stem(smoke: bool) -> Path:
    return RESULTS / ("training_tinystories_smoke" if smoke else "training_tinystories")


def earlier_results(smoke: bool, info, hw: dict, steps: int) -> dict:
    """What --add keeps of the results file: its measured runs, each until this call measures it again.

    Runs are only comparable on the same training data, device and number of steps, so anything else
    is refused rather than mixed into one table.
    """
    path = results_stem(smoke).with_suffix(".json")
    if not path.exists():
        raise ValueError(f"{shown(path)} does not exist; run without --add first")
    summary = json.loads(path.read_text())
    theirs = (summary.get("train_tokens"), summary.get("hardware", {}).get("name"))
    if theirs != (info.n_tokens, hw["name"]):
        raise ValueError(f"{shown(path)} was measured with {theirs[0]} training tokens on {theirs[1]}; this call has "
                         f"{info.n_tokens:,} tokens on {hw['name']}: runs are only added to the same data and device")
    kept = [r for r in summary["runs"] if "skipped" not in r]
    other_steps = sorted({r["steps"] for r in kept} - {steps})
    if other_steps:
        raise ValueError(f"{shown(path)} holds runs of {other_steps} steps; this call trains {steps} steps "
                         f"(set --epochs as that call did)")
    return {"runs": kept, "commands": summary.get("commands", []), "total_wall_s": summary["total_wall_s"]}


def write_results(results, smoke, hw, folder, info, val, total, calls) -> Path:
    """benchmarks/results/training_tinystories{,_smoke}.{md,json,png} for the runs so far (with --add, and earlier calls')."""
    from slmbook.dataloader import read_token_file

    stem = results_stem(smoke)
    stem.parent.mkdir(parents=True, exist_ok=True)
    order = [r.name for r in (SMOKE_RUNS if smoke else FULL_RUNS)]
    earlier = {r["name"]: r for r in calls["earlier"]["runs"]}
    measured = {r["name"] for r in results if "skipped" not in r}
    results = sorted([r for r in results if r["name"] in measured or r["name"] not in earlier]
                     + [r for name, r in earlier.items() if name not in measured], key=lambda r: order.index(r["name"]))
    plot(results, stem.with_suffix(".png"))
    validation = {**read_token_file(val)[1].__dict__}
    validation["path"] = shown(validation["path"])
    summary = {"smoke": smoke, "hardware": hw, "torch": torch.__version__, "data": shown(folder),
               "train_stories": info.n_stories, "train_tokens": info.n_tokens, "validation": validation,
               "total_wall_s": calls["earlier"]["total_wall_s"] + total,
               "commands": [*calls["earlier"]["commands"], calls["command"]], "runs": results}
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(report(summary))
    return stem


def report(summary: dict) -> str:
    done = [r for r in summary["runs"] if "skipped" not in r]
    commands = " then ".join(f"`{c}`" for c in summary["commands"])
    calls = len(summary["commands"])
    lines = [
        "# TinyStories training run (chapter 14)", "",
        *(["A CPU smoke run of the tiny model for a few steps: it checks that the script works, nothing more.", ""]
          if summary.get("smoke") else []),
        f"{commands} on "
        f"{summary['hardware']['name']} ({summary['hardware']['device']}), torch {summary['torch']}; "
        f"{summary['train_stories']:,} training stories ({summary['train_tokens']:,} GPT-2 tokens), validation: "
        f"{summary['validation']['n_stories']:,} official validation stories ({summary['validation']['n_tokens']:,} tokens). "
        f"Total wall time {summary['total_wall_s']:.0f} s" + (f" over {calls} calls." if calls > 1 else "."), "",
        "| run | parameters | training tokens | tokens seen | epochs | best val loss (nats/token) | best val bits/byte | "
        "at epoch | final val loss | final train loss | tokens/s | MFU | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in done:
        mfu = f"{r['mfu_median']:.0%}" if r.get("mfu_median") is not None else "-"
        bpb = f"{r['best_val_bpb']:.3f}" if r.get("best_val_bpb") is not None else "-"
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['train_tokens']:,} | {r['tokens_seen']:,} | {r['epochs']:.1f} | "
                     f"{r['best_val_loss']:.3f} | {bpb} | {r['best_epoch']:.1f} | {r['final_val_loss']:.3f} | "
                     f"{r['final_train_loss']:.3f} | {r['tokens_per_s_median']:,.0f} | {mfu} | {r['wall_s']:.0f} |")
    for r in summary["runs"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |||||||||||| ")
    by_name = {r["name"]: r for r in done}
    if {"book", "book-25%"} <= set(by_name):
        d = by_name["book-25%"]["best_val_loss"] - by_name["book"]["best_val_loss"]
        lines += ["", f"Data: a quarter of the stories costs {d:+.3f} nats/token of best validation loss at the same compute."]
    if {"book", "small"} <= set(by_name):
        d = by_name["small"]["best_val_loss"] - by_name["book"]["best_val_loss"]
        lines += [f"Model size: the half-width, half-depth model differs by {d:+.3f} nats/token on all the stories."]
    if {"book", "large"} <= set(by_name):
        d = by_name["large"]["best_val_loss"] - by_name["book"]["best_val_loss"]
        lines += [f"Model size: the 1.5x-width, 1.5x-depth model differs by {d:+.3f} nats/token on all the stories."]
    lines += ["", "Samples (temperature 0.8, top-k 50, from each run's best checkpoint):", ""]
    for r in done:
        for s in r["samples"]:
            lines.append(f"- **{r['name']}**: {s!r}")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if "skipped" not in r]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, r in enumerate(done):
        color = f"C{i}"
        per_step = r["batch_size"] * r["context"] / 1e6
        train = r["history"]["train"]
        ax.plot([row["step"] * per_step for row in train], [row["loss"] for row in train], color=color, alpha=0.45,
                linestyle="--", label=f"{r['name']} train")
        evals = r["history"]["eval"]
        ax.plot([row["step"] * per_step for row in evals], [row["val_loss"] for row in evals], color=color,
                marker="o", markersize=3, label=f"{r['name']} validation")
        bx.plot([row["step"] for row in train[1:]], [row["tokens_per_s"] / 1e6 for row in train[1:]], color=color,
                label=r["name"])
    ax.set_title("Loss on TinyStories: training (dashed) and validation")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats per token)")
    lowest = min((row["val_loss"] for r in done for row in r["history"]["eval"]), default=None)
    if lowest is not None and lowest + 4 < ax.get_ylim()[1]:
        ax.set_ylim(top=lowest + 4)  # the first steps (loss ~ ln 50,257 = 10.8) would flatten the rest
    ax.legend(fontsize=7)
    bx.set_title("Training throughput")
    bx.set_xlabel("optimizer step")
    bx.set_ylabel("tokens per second (millions)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
