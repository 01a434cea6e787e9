"""Training throughput: our Qwen vs transformers' Qwen3ForCausalLM, through the same training loop.

    python benchmarks/training_throughput.py                 # on a GPU: every shape, compiled, bf16
    python benchmarks/training_throughput.py --shape "book 51M (ctx 1024)" --out benchmarks/results/training_throughput_book
    python benchmarks/training_throughput.py --smoke         # CPU, tiny shapes, seconds: does it run?

Both models train in one `slmbook.training.Trainer` loop, so everything but the model is identical:
the same random-token file read through `slmbook.dataloader` (pinned memory, non-blocking copies),
the same batch, bf16 autocast, fused AdamW with the same parameter groups, gradient clipping, no
`.item()` inside the timed steps, `torch.compile` on both (by default with CUDA graphs,
mode "reduce-overhead": at the 15M shape a step lasts ~14 ms and launching its kernels one by one from
Python takes about as long), SDPA attention on both. transformers' model gets use_cache=False and
runs twice: with the same loss expression as ours (cross-entropy in float32 over the logits), and as a
transformers user trains it, `model(input_ids, labels=...)`, with its own loss.

Shapes: the issue's two, llama2.c's 15M model (dim 288, 6 layers, 6 heads, context 256, SwiGLU 768,
vocabulary 32,000, batch 128) and its 42M model (dim 512, 8 layers, 8 heads, context 1024, SwiGLU
1376, vocabulary 32,000, batch 32), with QK-norm added as Qwen has it; and the book's own model at
context 1024 (dim 512, 8 layers, 8 query / 4 key-value heads, SwiGLU 1536, GPT-2's vocabulary 50,257,
batch 32): the same body as the 42M shape with a 57% larger vocabulary, so a heavier output head.

MFU = tokens/s x model FLOPs per token (slmbook.flops.training_flops_per_token: every matrix product,
attention scores and output head included, backward = 2 x forward) / peak FLOP/s, against both the
measured bf16 matmul rate (slmbook.hardware.measure_matmul_tflops) and the data-sheet peak.
Writes benchmarks/results/training_throughput.md and .json (…_smoke.* with --smoke).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slmbook.config import BOOK, QwenConfig
from slmbook.flops import mfu, training_flops_per_token
from slmbook.hf_interop import hf_config_kwargs
from slmbook.training import Trainer
from slmbook.training_config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (model shape, batch size)
SHAPES = {
    "15M (llama2.c)": (QwenConfig(vocab_size=32000, context_length=256, dim=288, n_layers=6, n_heads=6, n_kv_heads=6,
                                  hidden_dim=768, rope_theta=10_000.0), 128),
    "42M (llama2.c)": (QwenConfig(vocab_size=32000, context_length=1024, dim=512, n_layers=8, n_heads=8, n_kv_heads=8,
                                  hidden_dim=1376, rope_theta=10_000.0), 32),
    "book 51M (ctx 1024)": (BOOK.replace(context_length=1024), 32),
}
SMOKE_SHAPES = {
    "smoke A": (QwenConfig(vocab_size=512, context_length=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, hidden_dim=128), 4),
    "smoke B": (QwenConfig(vocab_size=512, context_length=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128), 2),
}
# The targets on one H100 (tokens/s of ours; MFU at the 512 x 8 x 1024 shape; ours / transformers).
# The book's shape has none of its own: only the comparison with transformers is checked there.
TARGETS = {"15M (llama2.c)": {"tokens_per_s": 2.2e6}, "42M (llama2.c)": {"tokens_per_s": 1.2e6, "mfu": 0.45}}
TARGET_SPEEDUP = 2.0


class TransformersLM(torch.nn.Module):
    """transformers' Qwen3ForCausalLM behind the loop's interface: forward(x) -> logits, forward(x, y) ->
    (logits, loss). own_loss=True computes the loss the transformers way, model(x, labels=...)."""

    def __init__(self, config: QwenConfig, own_loss: bool = False):
        super().__init__()
        from transformers import Qwen3Config, Qwen3ForCausalLM

        hf_config = Qwen3Config(**hf_config_kwargs(config), attn_implementation="sdpa", use_cache=False)
        self.hf = Qwen3ForCausalLM(hf_config)
        self.own_loss = own_loss

    def forward(self, x, y=None):
        if y is not None and self.own_loss:
            out = self.hf(input_ids=x, labels=x, use_cache=False)  # the usual call: it shifts the labels itself
            return out.logits, out.loss
        logits = self.hf(input_ids=x, use_cache=False).logits
        if y is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))  # the same as ours
        return logits, loss


def random_token_file(folder: Path, vocab_size: int, n_tokens: int, seed: int = 0) -> Path:
    """A token file of uniformly random ids in the format of slmbook.dataloader (ids + JSON sidecar)."""
    from slmbook.dataloader import TokenFileInfo, token_dtype

    dtype = token_dtype(vocab_size)
    path = folder / f"random-{vocab_size}.bin"
    np.random.default_rng(seed).integers(0, vocab_size, n_tokens, dtype=np.int64).astype(dtype).tofile(path)
    info = TokenFileInfo(str(path), dtype.name, n_tokens, 0, 0, "random", vocab_size - 1, vocab_size)
    path.with_suffix(".json").write_text(json.dumps(asdict(info)))
    return path


IMPLS = {
    "slmbook": "our QwenModel, its own output head and loss",
    "slmbook-fused": "our QwenModel with slmbook.fused_loss: the head and loss fused, loss_chunk tokens at a time "
                     "(the softmax gradient as a Triton kernel on a GPU)",
    "transformers": "transformers' Qwen3ForCausalLM (sdpa), the same loss expression as `slmbook`",
    "transformers-labels": "transformers' Qwen3ForCausalLM (sdpa) with its own loss, the usual "
                           "model(input_ids, labels=input_ids)",
}
TRANSFORMERS = ("transformers", "transformers-labels")


def measure(impl: str, shape: QwenConfig, batch: int, data: Path, device: str, compile: bool, precision: str,
            warmup: int, steps: int, compile_mode: str = "default", loss_chunk: int = 8192) -> dict:
    """Tokens per second of `steps` training steps after `warmup` untimed ones (compilation included there)."""
    config = TrainConfig(model=shape, steps=warmup + steps, batch_size=batch, context=shape.context_length,
                         lr=1e-4, warmup_steps=0, precision=precision, compile=compile, compile_mode=compile_mode,
                         loss_chunk=loss_chunk if impl == "slmbook-fused" else 0, device=device,
                         log_interval=10**9, eval_interval=0, sample_tokens=0)
    model = TransformersLM(shape, own_loss=impl == "transformers-labels") if impl in TRANSFORMERS else None
    trainer = Trainer(config, data, None, progress=False, model=model)
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(warmup):
        out = trainer.train_step()
    first_loss = out["loss"].item()  # waits for the GPU
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        out = trainer.train_step()
    last_loss = out["loss"].item()  # the only sync of the timed steps
    seconds = time.perf_counter() - start
    result = {
        "impl": impl, "tokens_per_s": steps * config.tokens_per_step / seconds, "step_ms": 1e3 * seconds / steps,
        "warmup_s": warmup_s, "loss_first": first_loss, "loss_last": last_loss,
        "parameters": sum(p.numel() for p in {id(p): p for p in trainer.model.parameters()}.values()),
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    }
    del trainer, model, out
    gc.collect()
    torch._dynamo.reset()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result


def hardware(device: torch.device, precision: str) -> dict:
    from slmbook.hardware import describe_device, measure_matmul_tflops

    info = describe_device(device)
    peak = info.pop("peak", None)
    size = 8192 if device.type == "cuda" else 1024
    dtype = "bf16" if precision == "bf16" else ("tf32" if device.type == "cuda" else "fp32")
    measured = measure_matmul_tflops(dtype, size=size, device=device, repeats=20 if device.type == "cuda" else 3)
    info.update({
        "torch": torch.__version__, "python": platform.python_version(),
        "measured_matmul_tflops": measured, "matmul_dtype": dtype, "matmul_size": size,
        "datasheet_tflops": peak.tflops.get(dtype) if peak else None, "datasheet_name": peak.name if peak else None,
    })
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def table(rows: list[dict], hw: dict) -> str:
    lines = [
        f"Training throughput on {hw['name']} ({hw['device']}), torch {hw['torch']}, transformers {hw['transformers']}; "
        f"measured {hw['matmul_dtype']} matmul peak {hw['measured_matmul_tflops']:.3g} TFLOP/s "
        f"(n={hw['matmul_size']})" + (f", data sheet {hw['datasheet_tflops']} TFLOP/s ({hw['datasheet_name']})"
                                       if hw.get("datasheet_tflops") else "")
        + (f"; torch.compile mode {hw['compile_mode']!r}" if hw.get("compile_mode") else "") + ".",
        "",
        "| shape | batch x context | implementation | compiled | tokens/s | step (ms) | MFU (measured peak) | "
        "MFU (data sheet) | ours / transformers (same mode) | peak memory (GiB) | target |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        sheet = f"{r['mfu_datasheet']:.1%}" if r.get("mfu_datasheet") is not None else "-"
        speedup = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
        memory = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "-"
        compiled = r["compile_mode"] or "no"
        lines.append(f"| {r['shape']} | {r['batch']} x {r['context']} | {r['impl']} | {compiled} | "
                     f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['mfu_measured']:.1%} | {sheet} | {speedup} | "
                     f"{memory} | {r.get('target', '')} |")
    lines += ["", *(f"- `{name}`: {what}" for name, what in IMPLS.items() if any(r["impl"] == name for r in rows))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, a few steps: check that it runs")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--impl", default=",".join(IMPLS), help=f"comma-separated, from {sorted(IMPLS)}")
    p.add_argument("--shape", action="append", default=None,
                   help=f"a shape to time, repeatable, from {sorted(SHAPES)} (default: all of them)")
    p.add_argument("--loss-chunk", type=int, default=8192, help="tokens per chunk of slmbook-fused's loss")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for every model (default: reduce-overhead on a GPU, else default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models (default: on for CUDA, off for the CPU smoke run)")
    p.add_argument("--baseline-compile-mode", default=None,
                   help="also time transformers compiled in this mode (e.g. 'default', without CUDA graphs)")
    p.add_argument("--eager-too", action="store_true", help="also time both models without torch.compile")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on a GPU, 3 in --smoke)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on a GPU, 1 in --smoke)")
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/training_throughput[_smoke])")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    for impl in impls:
        if impl not in IMPLS:
            p.error(f"--impl: {impl!r} is unknown; allowed: {sorted(IMPLS)}")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shape:
        for name in args.shape:
            if name not in shapes:
                p.error(f"--shape: {name!r} is unknown; allowed: {sorted(shapes)}")
        shapes = {name: shapes[name] for name in args.shape}
    compile_default = device.type == "cuda"
    compile_mode = args.compile_mode or ("reduce-overhead" if device.type == "cuda" else "default")
    compiled = [args.compile if args.compile is not None else compile_default]
    if args.eager_too and compiled[0]:
        compiled.append(False)
    steps = args.steps or (3 if args.smoke else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    precision = "bf16" if device.type == "cuda" else "fp32"
    stem = Path(args.out) if args.out else RESULTS / ("training_throughput_smoke" if args.smoke else "training_throughput")

    hw = hardware(device, precision)
    hw["compile_mode"] = compile_mode if compiled[0] else None
    print(f"device: {hw['name']} ({device}); measured {hw['matmul_dtype']} matmul: {hw['measured_matmul_tflops']:.3g} TFLOP/s",
          flush=True)
    rows = []

    def save() -> str:
        """Write the table so far (after every shape: a run cut short keeps what it measured)."""
        text = table(rows, hw)
        stem.parent.mkdir(parents=True, exist_ok=True)
        note = ("A CPU smoke run: it checks that the script works. On a shared CPU these numbers are noise, "
                "not a benchmark.\n\n" if args.smoke else "")
        stem.with_suffix(".md").write_text(f"# Training throughput\n\n`python benchmarks/{Path(__file__).name} "
                                           f"{shlex.join(argv if argv is not None else sys.argv[1:])}`\n\n{note}{text}")
        stem.with_suffix(".json").write_text(json.dumps({"hardware": hw, "steps": steps, "warmup": warmup,
                                                         "precision": precision, "compile_mode": compile_mode,
                                                         "loss_chunk": args.loss_chunk, "implementations": IMPLS,
                                                         "rows": rows}, indent=1, default=str) + "\n")
        return text

    with tempfile.TemporaryDirectory() as tmp:
        for name, (shape, batch) in shapes.items():
            n_tokens = max((warmup + steps) * batch * (shape.context_length + 1) + 1, 2**20 if not args.smoke else 0)
            data = random_token_file(Path(tmp), shape.vocab_size, min(n_tokens, 2**26))
            flops = training_flops_per_token(shape, shape.context_length)
            # called only inside this iteration; the defaults bind this shape's values all the same
            def timed(impl, use_compile, mode, name=name, shape=shape, batch=batch, data=data, flops=flops):
                print(f"{name}: {impl}{f' compiled ({mode})' if use_compile else ''} ...", flush=True)
                r = measure(impl, shape, batch, data, str(device), use_compile, precision, warmup, steps, mode,
                            args.loss_chunk)
                r.update(shape=name, batch=batch, context=shape.context_length, compiled=use_compile,
                         compile_mode=mode if use_compile else None, flops_per_token=flops, config=shape.to_dict(),
                         mfu_measured=mfu(r["tokens_per_s"], shape, shape.context_length,
                                          hw["measured_matmul_tflops"] * 1e12),
                         mfu_datasheet=(mfu(r["tokens_per_s"], shape, shape.context_length, hw["datasheet_tflops"] * 1e12)
                                        if hw.get("datasheet_tflops") else None))
                rows.append(r)
                print(f"  {r['tokens_per_s']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, MFU {r['mfu_measured']:.1%} "
                      f"of measured peak (warm-up {r['warmup_s']:.0f} s)", flush=True)
                return r

            for use_compile in compiled:
                by_impl = {impl: timed(impl, use_compile, compile_mode) for impl in impls}
                theirs = max((by_impl[i]["tokens_per_s"] for i in TRANSFORMERS if i in by_impl), default=None)
                for impl in ("slmbook", "slmbook-fused"):
                    if impl in by_impl and theirs:
                        by_impl[impl]["speedup"] = by_impl[impl]["tokens_per_s"] / theirs  # vs the faster transformers
                mine = [by_impl[i] for i in ("slmbook", "slmbook-fused") if i in by_impl]
                baseline = None
                if use_compile and args.baseline_compile_mode and args.baseline_compile_mode != compile_mode:
                    baseline = timed("transformers", True, args.baseline_compile_mode)
                if mine and not args.smoke and device.type == "cuda" and use_compile:
                    ours, target = max(mine, key=lambda r: r["tokens_per_s"]), TARGETS.get(name, {})
                    checks = []
                    if "tokens_per_s" in target:
                        checks.append(f"{'✅' if ours['tokens_per_s'] >= target['tokens_per_s'] else '❌'} "
                                      f">= {target['tokens_per_s'] / 1e6:.1f} M tok/s")
                    if "mfu" in target:
                        measured = ours["mfu_measured"]  # the brief's MFU: against the measured bf16 matmul peak
                        checks.append(f"{'✅' if measured >= target['mfu'] else '❌'} MFU >= {target['mfu']:.0%} (measured peak)")
                    if ours.get("speedup"):
                        checks.append(f"{'✅' if ours['speedup'] >= TARGET_SPEEDUP else '❌'} >= {TARGET_SPEEDUP:.0f}x transformers "
                                      f"(same compile mode)")
                    if baseline:
                        ours["speedup_vs_baseline"] = ours["tokens_per_s"] / baseline["tokens_per_s"]
                        checks.append(f"{ours['speedup_vs_baseline']:.2f}x transformers compiled with mode "
                                      f"{args.baseline_compile_mode!r}")
                    ours["target"] = ", ".join(checks)
            text = save()
    print()
    print(text)
    print(f"wrote {stem.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
