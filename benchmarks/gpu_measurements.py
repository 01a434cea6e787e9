"""Chapter 3's measurements on real hardware: matmul TFLOP/s, memory bandwidth, and the memory
estimator against the measured peak of a training step.

1. Achieved TFLOP/s of square matrix products in fp32, tf32 (CUDA only) and bf16, for several sizes,
   next to the published peak of the GPU when `slmbook.hardware.PEAK` knows it.
2. Achieved memory bandwidth of a large device-to-device copy.
3. For the chapter-14 model (slmbook.config.BOOK, float32 weights, bf16 autocast, AdamW): the peak
   memory of one training step (forward + backward + optimizer step, measured after a warm-up step)
   against `slmbook.memory.training_memory`, for each batch size, in two set-ups:
   "torch defaults" (AdamW's foreach implementation, logits dropped before backward) and
   "chapter 14" (fused AdamW, logits held through backward, as slmbook.training's loop does).
   On a GPU the measurement is `torch.cuda.max_memory_allocated` (minus what was allocated before
   the model existed); elsewhere PyTorch's MemTracker. Also the step time, tokens/s and MFU.

Prints tables and writes benchmarks/results/gpu_measurements_<hardware>.{md,json}.

    python benchmarks/gpu_measurements.py                # on a GPU: BOOK at batch 1, 16, 32
    python benchmarks/gpu_measurements.py --device cpu   # small sizes, a tiny model: a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch

from slmbook import flops, hardware, memory
from slmbook.config import PRESETS
from slmbook.env import pick_device
from slmbook.hardware import cpu_name
from slmbook.qwen import QwenModel

RESULTS = Path(__file__).parent / "results"
SETUPS = {  # name: (fused AdamW, keep logits through backward)
    "torch defaults": (False, False),
    "chapter 14": (True, True),
}


def describe(device: torch.device, peak) -> dict:
    info = {"device": str(device), "cpu": cpu_name(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "gpu memory (GiB)": round(props.total_memory / 2**30, 1),
                     "SMs": props.multi_processor_count, "compute capability": f"{props.major}.{props.minor}",
                     "published peak": None if peak is None else
                     {"name": peak.name, "tflops": peak.tflops, "bandwidth_gbs": peak.bandwidth_gbs}})
    info["hardware"] = info.get("gpu") or info["cpu"]
    return info


def matmul_rows(device, sizes, repeats, peak) -> list[dict]:
    rows = []
    for precision in ("fp32", "tf32", "bf16"):
        if precision == "tf32" and device.type != "cuda":
            continue
        for size in sizes:
            tflops = hardware.measure_matmul_tflops(precision, size, device, repeats=repeats, warmup=2)
            published = peak.tflops.get(precision) if peak else None
            rows.append({"precision": precision, "size": size, "tflops": tflops, "peak_tflops": published,
                         "fraction_of_peak": tflops / published if published else None})
            print(f"  matmul {precision:>4} {size:>6}: {tflops:10.2f} TFLOP/s"
                  + (f"  ({100 * tflops / published:.0f}% of {published})" if published else ""))
    return rows


def bandwidth_row(device, n_bytes, repeats, peak) -> dict:
    gbs = hardware.measure_bandwidth(device, n_bytes, repeats=repeats, warmup=2)
    published = peak.bandwidth_gbs if peak else None
    print(f"  copy {n_bytes / 2**20:.0f} MiB: {gbs:.1f} GB/s" + (f"  ({100 * gbs / published:.0f}% of {published})" if published else ""))
    return {"bytes": n_bytes, "gbs": gbs, "peak_gbs": published, "fraction_of_peak": gbs / published if published else None}


def flash_attention_usable(config, batch, seq_len, device) -> bool | None:
    """Whether PyTorch's FlashAttention kernel accepts this model's bf16 causal GQA attention (the
    estimator assumes a fused kernel; the math fallback would store T x T scores). None off CUDA."""
    if device.type != "cuda":
        return None
    q = torch.zeros(batch, config.n_heads, seq_len, config.head_dim, dtype=torch.bfloat16, device=device)
    kv = torch.zeros(batch, config.n_kv_heads, seq_len, config.head_dim, dtype=torch.bfloat16, device=device)
    try:
        params = torch.backends.cuda.SDPAParams(q, kv, kv, None, 0.0, True, config.n_kv_heads < config.n_heads)
        return bool(torch.backends.cuda.can_use_flash_attention(params, debug=True))
    except (AttributeError, TypeError, RuntimeError) as error:  # the API moved between torch versions
        print(f"  (could not ask torch about FlashAttention: {error})")
        return None


def memory_row(config_name, batch, seq_len, setup, device, timed_steps, peak) -> dict:
    config = PRESETS[config_name]
    fused, keep_logits = SETUPS[setup]
    estimate = memory.training_memory(config, batch, seq_len, "float32", "bfloat16",
                                      keep_logits=keep_logits, fused_optimizer=fused)
    row = {"config": config_name, "batch": batch, "seq_len": seq_len, "setup": setup,
           "estimated_peak": estimate.peak, "estimated_phase": estimate.peak_phase,
           "estimated_phases": estimate.phase_totals, "components": estimate.components,
           "flash_attention": flash_attention_usable(config, batch, seq_len, device)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = 0
    torch.manual_seed(0)
    try:
        model = QwenModel(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=not fused)
        g = torch.Generator().manual_seed(0)
        ids, targets = torch.randint(0, config.vocab_size, (2, batch, seq_len), generator=g).to(device).unbind(0)
        measured = memory.measure_training_peak(model, ids, targets, optimizer, torch.bfloat16, keep_logits)
        row["measured_peak"] = measured - baseline
        row["baseline_allocated"] = baseline
        if device.type == "cuda":
            row["reserved"] = torch.cuda.max_memory_reserved(device)
        row["difference_pct"] = 100 * (estimate.peak - row["measured_peak"]) / row["measured_peak"]
        # speed of the same step (after the two already taken)
        hardware.synchronize(device)
        start = time.perf_counter()
        for _ in range(timed_steps):
            memory.train_step(model, ids, targets, optimizer, torch.bfloat16, keep_logits)
        hardware.synchronize(device)
        seconds = (time.perf_counter() - start) / timed_steps
        row["step_seconds"] = seconds
        row["tokens_per_second"] = batch * seq_len / seconds
        if peak and "bf16" in peak.tflops:
            row["mfu"] = flops.mfu(row["tokens_per_second"], config, seq_len, peak.tflops["bf16"] * 1e12)
        del model, optimizer, ids, targets
    except torch.OutOfMemoryError as error:
        row["measured_peak"] = None
        row["error"] = f"out of memory: {str(error).splitlines()[0]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    measured = row.get("measured_peak")
    print(f"  {config_name} batch {batch:>3} x {seq_len} [{setup}]: estimate {memory.format_bytes(estimate.peak)}"
          f" ({row['estimated_phase']}), measured "
          + (f"{memory.format_bytes(measured)} ({row['difference_pct']:+.1f}%)" if measured else row.get("error", "-")))
    return row


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    hw = report["hardware"]
    lines = [f"# Chapter 3 measurements on {hw['hardware']}", "",
             f"torch {hw['torch']}, CUDA {hw['cuda']}, device `{hw['device']}`, CPU {hw['cpu']}.", "",
             "## Matrix products (n x n @ n x n, 2 n^3 FLOPs)", "",
             "| precision | n | achieved TFLOP/s | published peak | % of peak |", "|---|---:|---:|---:|---:|"]
    for r in report["matmul"]:
        pct = None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"]
        lines.append(f"| {r['precision']} | {r['size']} | {r['tflops']:.2f} | {_fmt(r['peak_tflops'])} | {_fmt(pct, 0)} |")
    b = report["bandwidth"]
    pct = None if b["fraction_of_peak"] is None else 100 * b["fraction_of_peak"]
    lines += ["", "## Memory bandwidth (copy: every byte read once and written once)", "",
              "| buffer | achieved GB/s | published peak GB/s | % of peak |", "|---:|---:|---:|---:|",
              f"| {b['bytes'] / 2**20:.0f} MiB | {b['gbs']:.1f} | {_fmt(b['peak_gbs'], 0)} | {_fmt(pct, 0)} |",
              "", "## Training-step peak memory: estimate vs measured", "",
              "float32 weights, bf16 autocast, AdamW; measured after one warm-up step "
              + ("with `torch.cuda.max_memory_allocated`." if hw["device"].startswith("cuda") else "with PyTorch's MemTracker."),
              "", "| model | batch x seq | set-up | estimated peak (moment) | measured peak | estimate - measured "
              "| step time | tokens/s | MFU |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["memory"]:
        measured = r.get("measured_peak")
        lines.append(
            f"| {r['config']} | {r['batch']} x {r['seq_len']} | {r['setup']} | "
            f"{memory.format_bytes(r['estimated_peak'])} ({r['estimated_phase']}) | "
            f"{memory.format_bytes(measured) if measured else r.get('error', '-')} | "
            f"{_fmt(r.get('difference_pct')) + ' %' if measured else '-'} | "
            f"{_fmt(1e3 * r['step_seconds']) + ' ms' if 'step_seconds' in r else '-'} | "
            f"{_fmt(r.get('tokens_per_second'), 0)} | {_fmt(100 * r['mfu']) + ' %' if 'mfu' in r else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", default=None, choices=sorted(PRESETS),
                        help="model for the memory check (default: book on a GPU, tiny elsewhere)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 1 16 32 on a GPU)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the context length)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="matmul sizes")
    parser.add_argument("--bandwidth-bytes", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--timed-steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    gpu = device.type == "cuda"
    config_name = args.config or ("book" if gpu else "tiny")
    batches = args.batch or ([1, 16, 32] if gpu else [2])
    seq_len = args.seq_len or (PRESETS[config_name].context_length if gpu else 64)
    sizes = args.sizes or ([1024, 2048, 4096, 8192, 16384] if gpu else [128, 256])
    repeats = args.repeats or (20 if gpu else 3)
    timed_steps = args.timed_steps or (10 if gpu else 1)
    n_bytes = args.bandwidth_bytes or (2**30 if gpu else 2**25)

    peak = hardware.describe_device(device)["peak"]  # the published figures, if this GPU is known
    report = {"hardware": describe(device, peak)}
    print(f"Chapter 3 measurements on {report['hardware']['hardware']} ({device})")
    report["matmul"] = matmul_rows(device, sizes, repeats, peak)
    report["bandwidth"] = bandwidth_row(device, n_bytes, repeats, peak)
    report["memory"] = [memory_row(config_name, b, seq_len, setup, device, timed_steps, peak)
                        for setup in SETUPS for b in batches]

    text = markdown(report)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", report["hardware"]["hardware"].lower()).strip("-")
    (args.out / f"gpu_measurements_{slug}.md").write_text(text)
    (args.out / f"gpu_measurements_{slug}.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out / f'gpu_measurements_{slug}'}.{{md,json}}")
    return report


if __name__ == "__main__":
    main()
