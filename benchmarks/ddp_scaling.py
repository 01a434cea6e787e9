"""Data-parallel scaling of chapter 14's run: 1 process vs `torchrun --nproc_per_node N`, same global batch.

Runs `python -m slmbook.train` once in one process and once under torchrun (DistributedDataParallel;
NCCL on GPUs, gloo on CPUs), with the same configuration and global batch, then resumes the
multi-process run's rank-0 checkpoint in a single process. Prints and saves (benchmarks/results/)
a table: tokens/s, scaling efficiency = N-process tokens/s / (N x 1-process tokens/s), the largest
difference between the two validation-loss curves, and what the resume did.

    python benchmarks/ddp_scaling.py --nproc 2                 # on a machine with 2 GPUs
    python benchmarks/ddp_scaling.py --smoke                   # CPU, gloo, tiny model: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from slmbook.checkpoint import read_state

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# NVLink multicast stays off (shared hosts): NCCL, PyTorch symmetric memory and NVSHMEM.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def train(args_list, out: Path, nproc: int, env) -> dict:
    """One training run; returns its summary plus the validation curve from the checkpoint."""
    summary_file = out.with_suffix(".summary.json")
    launcher = [sys.executable, "-m", "slmbook.train"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "slmbook.train"]
    cmd = launcher + args_list + ["--out", str(out), "--summary-json", str(summary_file), "--no-progress"]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    summary = json.loads(summary_file.read_text())
    state = read_state(out)
    summary["val_curve"] = [(row["step"], row["val_loss"]) for row in state["history"].get("eval", [])]
    summary["wall_s"] = time.perf_counter() - start
    summary["world_size"] = state.get("world_size")
    return summary


def hardware(device: str) -> str:
    if device == "cuda":
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        return f"{torch.cuda.device_count()} x {', '.join(sorted(names))}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the data-parallel run")
    parser.add_argument("--config", default="book")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the config's)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU with gloo, a few steps")
    parser.add_argument("--workdir", default=None,
                        help="folder for the runs' checkpoints (default: a new temporary folder, so no earlier run "
                             "is overwritten)")
    args = parser.parse_args(argv)
    if args.nproc < 2:
        raise SystemExit(f"--nproc={args.nproc}: a data-parallel run needs at least 2 processes")
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cuda" and torch.cuda.device_count() < args.nproc:
        raise SystemExit(f"--nproc={args.nproc} but only {torch.cuda.device_count()} GPU(s) are visible")
    config, steps = ("tiny", 8) if args.smoke else (args.config, args.steps)
    common = ["--config", config, "--steps", str(steps), "--device", device, "--fresh"]
    if args.smoke:
        common += ["--batch-size", "4", "--warmup-steps", "2", "--eval-interval", "4", "--eval-batches", "2", "--no-compile"]
    elif args.batch_size:
        common += ["--batch-size", str(args.batch_size)]
    env = dict(os.environ, **SAFE_ENV, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ddp_scaling-"))
    work.mkdir(parents=True, exist_ok=True)

    one = train(common, work / "one", 1, env)
    many = train(common, work / f"n{args.nproc}", args.nproc, env)
    # The multi-process run's checkpoint (written by rank 0) opened by a single process: same settings,
    # so the run is recognised as the same one, loads, and reports where it stands.
    resumed = train([a for a in common if a != "--fresh"], work / f"n{args.nproc}", 1, env)

    curve_one, curve_many = dict(one["val_curve"]), dict(many["val_curve"])
    shared = sorted(set(curve_one) & set(curve_many))
    max_diff = max((abs(curve_one[s] - curve_many[s]) for s in shared), default=float("nan"))
    efficiency = many["tokens_per_s_median"] / (args.nproc * one["tokens_per_s_median"])
    table = [
        "| run | processes | tokens/s (median) | final val loss | best val loss | wall (s) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| single | 1 | {one['tokens_per_s_median']:,.0f} | {one['val_loss']:.4f} | "
        f"{min(curve_one.values(), default=float('nan')):.4f} | {one['wall_s']:.0f} |",
        f"| data-parallel (DDP) | {args.nproc} | {many['tokens_per_s_median']:,.0f} | {many['val_loss']:.4f} | "
        f"{min(curve_many.values(), default=float('nan')):.4f} | {many['wall_s']:.0f} |",
        f"| resume of the DDP checkpoint on 1 process | 1 | {resumed['tokens_per_s_median']:,.0f} | "
        f"{resumed['val_loss']:.4f} | | {resumed['wall_s']:.0f} |",
    ]
    text = "\n".join([
        f"# Data-parallel scaling ({'smoke, ' if args.smoke else ''}{config} config)", "",
        f"- hardware: {hardware(device)}; backend {'nccl' if device == 'cuda' else 'gloo'}",
        f"- same global batch and steps in both runs: `{' '.join(common)}`", "",
        *table, "",
        f"- scaling efficiency: {efficiency:.1%} (N-process tokens/s / (N x 1-process tokens/s))",
        f"- validation-loss curves at {len(shared)} shared evaluations: largest difference {max_diff:.4f} nats/token",
        f"- resume: the {args.nproc}-process run's rank-0 checkpoint opened by 1 process at step "
        f"{resumed['steps']} (val loss {resumed['val_loss']:.4f}; the DDP run ended at {many['val_loss']:.4f})",
    ])
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ddp_scaling_smoke" if args.smoke else f"ddp_scaling_{args.nproc}gpu"
    (RESULTS / f"{name}.md").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"hardware": hardware(device), "efficiency": efficiency, "max_val_curve_diff": max_diff,
         "one": one, "many": many, "resumed": resumed}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
