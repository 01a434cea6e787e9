"""Tuning the `reader` preset for 2 CPU cores: at equal compute, which batch size and learning rate?

    python benchmarks/reader_cpu_preset.py --jobs 2 --threads 1     # the sweep, two runs at a time
    python benchmarks/reader_cpu_preset.py --time-only --wait-idle 3600

Each run is the `reader` preset (slmbook.training.PRESETS: 4 layers, dim 128, the 4,096-token
TinyStories tokenizer) with a few changes, trained on the shipped sample (the train head) and evaluated
on all 1,000 official validation stories. All but the last spend the same compute (150 x 16 x 256 =
614 k training tokens, 1.3 epochs): fewer sequences a step means more optimizer steps.

Reported per run: validation bits per byte and loss, the CPU seconds of training (process time, which
depends much less than wall time on what else the machine runs), the wall seconds, the load average,
and a sample story. --time-only trains only the preset with torch's threads (one per core) and
measures its wall time; --wait-idle first waits until the machine is idle (1-minute load average
below 0.7), because a shared machine's wall time says little. Writes
benchmarks/results/reader_cpu_preset.{json,md} (--time-only: reader_cpu_preset_timing.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a source checkout without an install

RESULTS = REPO / "benchmarks" / "results"
PRESET = "reader"
RUNS = {  # name -> changes to the preset
    "16 x 150 steps": {"batch_size": 16, "steps": 150, "warmup_steps": 15},
    "8 x 300 steps": {"batch_size": 8, "steps": 300, "warmup_steps": 30},
    "8 x 300 steps, lr 5e-3": {"batch_size": 8, "steps": 300, "warmup_steps": 30, "lr": 5e-3},
    "4 x 600 steps (the preset)": {},
    "4 x 600 steps, lr 2e-3": {"lr": 2e-3},
    "2 x 1200 steps, lr 2e-3": {"batch_size": 2, "steps": 1200, "warmup_steps": 100, "lr": 2e-3},
    "16 x 300 steps (twice the compute)": {"batch_size": 16, "steps": 300, "warmup_steps": 30},
}


def train(name: str, changes: dict, threads: int | None) -> dict:
    """One run of the sweep: the preset with `changes`, on the shipped sample; its numbers."""
    import tempfile

    from slmbook.tinystories_tokenizer import TOKENIZER_NAME, tinystories_encoding
    from slmbook.train_cli import sample_data
    from slmbook.training import Trainer
    from slmbook.training_config import training_preset

    if threads:
        torch.set_num_threads(threads)
    config = training_preset(PRESET).replace(**changes, device="cpu", eval_interval=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = sample_data(Path(tmp) / "data", tokenizer=TOKENIZER_NAME)
        trainer = Trainer(config, data / "train.bin", data / "validation.bin", encoding=tinystories_encoding(),
                          progress=False)
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        while trainer.step < config.steps:
            trainer.train_step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        start = time.perf_counter()
        result = trainer.evaluate(0)
        eval_s = time.perf_counter() - start
        sample = trainer.sample(80, seed=0)
    return {"name": name, "changes": changes, "steps": config.steps, "batch_size": config.batch_size,
            "lr": config.lr, "warmup_steps": config.warmup_steps, "tokens": config.steps * config.tokens_per_step,
            "epochs": trainer.train_data.epochs(config.steps), "parameters": trainer.model.num_parameters(),
            "val_loss": result["val_loss"], "val_bpb": result["val_bpb"], "train_cpu_s": cpu, "train_wall_s": wall,
            "eval_wall_s": eval_s, "load_at_start": load, "torch_threads": torch.get_num_threads(), "sample": sample}


def wait_idle(seconds: float, threshold: float = 0.7) -> float:
    """Wait (up to `seconds`) until the 1-minute load average is below `threshold`; returns it."""
    deadline = time.time() + seconds
    while os.getloadavg()[0] >= threshold and time.time() < deadline:
        time.sleep(15)
    return os.getloadavg()[0]


def hardware() -> dict:
    from slmbook.hardware import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def report(summary: dict) -> str:
    hw = summary["hardware"]
    lines = [f"# The `reader` preset on the CPU{': timing' if summary['time_only'] else ''}", "",
             f"- command: `{summary['command']}`",
             f"- hardware: {hw['cpu']}, {hw['cores']} cores; torch {hw['torch']}, Python {hw['python']}; "
             f"{summary['jobs']} run(s) at a time",
             "- data: the shipped sample, tokenized with tinystories-4k (train head: 2,216 stories; "
             "validation: the 1,000 official validation stories, all evaluated)",
             "- CPU s: process time of the training steps (both threads counted when there are two); wall s: "
             "elapsed; load: the 1-minute load average when the run started (2 cores: above 2 means shared)", "",
             "| run | sequences x steps | lr | tokens | val bits/byte | val loss (nats) | CPU s | wall s | threads "
             "| load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["runs"]:
        lines.append(f"| {r['name']} | {r['batch_size']} x {r['steps']} | {r['lr']:g} | {r['tokens']:,} "
                     f"| {r['val_bpb']:.3f} | {r['val_loss']:.3f} | {r['train_cpu_s']:.0f} | {r['train_wall_s']:.0f} "
                     f"| {r['torch_threads']} | {r['load_at_start']:.1f} |")
    lines += ["", "Samples (prompt 'Once upon a time', temperature 0.8, top-k 50, seed 0):", ""]
    lines += [f"- {r['name']}: {r['sample']!r}" for r in summary["runs"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", help=f"comma-separated subset of {list(RUNS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time, each in its own process")
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's, one per core)")
    p.add_argument("--time-only", action="store_true", help="only the preset, timed")
    p.add_argument("--wait-idle", type=float, default=0, help="first wait up to this many seconds for an idle machine")
    p.add_argument("--steps", type=int, help="every run this many steps instead (a quick check of the script)")
    p.add_argument("--out", help="output stem (default benchmarks/results/reader_cpu_preset[_timing])")
    args = p.parse_args(argv)
    names = [n for n in RUNS if n == "4 x 600 steps (the preset)"] if args.time_only else list(RUNS)
    if args.runs:
        names = [n.strip() for n in args.runs.split(",")]
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            p.error(f"--runs: unknown {unknown}; allowed: {list(RUNS)}")
    changes = {n: RUNS[n] for n in names}
    if args.steps:
        from slmbook.training_config import training_preset

        base = training_preset(PRESET)
        changes = {n: c | {"steps": args.steps, "warmup_steps": c.get("warmup_steps", base.warmup_steps) * args.steps
                           // c.get("steps", base.steps)} for n, c in changes.items()}
    load = wait_idle(args.wait_idle) if args.wait_idle else None
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(train, names, [changes[n] for n in names], [args.threads] * len(names)))
    else:
        runs = [train(n, changes[n], args.threads) for n in names]
    for r in runs:
        print(f"{r['name']}: {r['val_bpb']:.3f} bits/byte; {r['train_cpu_s']:.0f} CPU s, {r['train_wall_s']:.0f} s",
              flush=True)
    summary = {"command": " ".join(["python benchmarks/reader_cpu_preset.py", *argv]), "hardware": hardware(),
               "jobs": args.jobs, "time_only": args.time_only, "load_after_waiting": load, "runs": runs}
    default = "reader_cpu_preset_timing" if args.time_only else "reader_cpu_preset"
    stem = Path(args.out) if args.out else RESULTS / default
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report(summary))
    print(report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
