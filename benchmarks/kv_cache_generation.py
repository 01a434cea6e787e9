"""Generation speed with and without the KV cache (chapter 9).

Greedy generation from a real TinyStories prompt with `slmbook.generation.generate`, with the KV
cache (one token per step) and without (the whole sequence again every step), for each number of
new tokens. Both paths run the output head on the last position only, so the difference is what the
cache saves. The cache runs twice: "preallocated" (attention over the stored tokens) and "static"
(the write position on the device; on CUDA every decode step replayed as one CUDA graph). Prints a
table and writes it, with the hardware, to benchmarks/results/kv_cache_generation_<device>.{md,json}.

    python benchmarks/kv_cache_generation.py                       # CPU, the book's model
    python benchmarks/kv_cache_generation.py --device cuda
    python benchmarks/kv_cache_generation.py --threads 1             # steadier on a busy shared CPU

Untrained weights: speed does not depend on what the weights are, and greedy decoding of a fixed
length makes both paths do the same number of steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from slmbook.config import PRESETS, QwenConfig
from slmbook.generation import generate
from slmbook.hardware import cpu_name, synchronize
from slmbook.qwen import QwenModel

RESULTS = Path(__file__).parent / "results"

# A smaller model than the book's (its no-cache run is quicker). Its body (8 layers of width 256) is a
# third of its parameters next to the GPT-2-sized output head: the head costs the same with or without
# the cache, so the smaller the body, the smaller the cache's gain.
BENCH = QwenConfig(vocab_size=50257, context_length=2048, dim=256, n_layers=8, n_heads=4, n_kv_heads=2,
                   hidden_dim=768)
CONFIGS = {"bench": BENCH, **PRESETS}


def hardware(device: torch.device) -> dict:
    info = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def prompt_tokens(n: int) -> torch.Tensor:
    """The first n GPT-2 tokens of the first shipped TinyStories validation story(ies)."""
    from slmbook.data import load_stories
    from slmbook.tokenizer import gpt2_encoding

    enc = gpt2_encoding()
    ids: list[int] = []
    for story in load_stories("validation", source="sample", verbose=False):
        ids += enc.encode_ordinary(story)
        if len(ids) >= n:
            return torch.tensor(ids[:n])
    raise ValueError(f"prompt_tokens={n}: the shipped stories hold fewer tokens")


def timed_generate(model, prompt, new_tokens, use_cache, device, cache="preallocated") -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) for one generation.

    On a CPU shared with other jobs the wall clock also counts the time others held the cores; the
    process's CPU time counts only the work done, so both are recorded.
    """
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = generate(model, prompt, new_tokens, use_cache=use_cache, cache=cache)
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    assert out.shape[-1] == prompt.shape[-1] + new_tokens
    return seconds, cpu_seconds


def run(config_name: str = "book", device: str = "cpu", new_tokens=(256, 1024), prompt_len: int = 16,
        dtype: str | None = None, save: bool = True) -> dict:
    if config_name not in CONFIGS:
        raise ValueError(f"config={config_name!r} is unknown; allowed: {sorted(CONFIGS)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available here")
    config = CONFIGS[config_name]
    config = config.replace(context_length=max(config.context_length, prompt_len + max(new_tokens)),
                            **({"dtype": dtype} if dtype else {}))
    torch.manual_seed(0)
    model = QwenModel(config).to(device).eval()
    prompt = prompt_tokens(prompt_len).to(device)
    for cache in ("preallocated", "static"):  # warm-up: allocator, kernels
        timed_generate(model, prompt, 8, True, device, cache)
    timed_generate(model, prompt, 8, False, device)
    rows = []
    for n in new_tokens:
        cached, cached_cpu = timed_generate(model, prompt, n, True, device)
        static, static_cpu = timed_generate(model, prompt, n, True, device, "static")
        uncached, uncached_cpu = timed_generate(model, prompt, n, False, device)
        rows.append({"new_tokens": n, "cache_tokens_per_s": n / cached, "static_cache_tokens_per_s": n / static,
                     "no_cache_tokens_per_s": n / uncached,
                     "cache_seconds": cached, "static_cache_seconds": static, "no_cache_seconds": uncached,
                     "speedup": uncached / cached, "speedup_static": uncached / static,
                     "cache_cpu_seconds": cached_cpu, "static_cache_cpu_seconds": static_cpu,
                     "no_cache_cpu_seconds": uncached_cpu, "speedup_cpu_time": uncached_cpu / cached_cpu,
                     "speedup_static_cpu_time": uncached_cpu / static_cpu})
    result = {"benchmark": "kv_cache_generation", "config_name": config_name, "config": config.to_dict(),
              "parameters": model.num_parameters(), "prompt_tokens": prompt_len, "decoding": "greedy",
              "hardware": hardware(device), "rows": rows}
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"kv_cache_generation_{device.type}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    hw, c = result["hardware"], result["config"]
    lines = [
        "# KV-cache generation benchmark",
        "",
        f"- hardware: {hw.get('gpu', hw['cpu'])} (device {hw['device']}; CPU {hw['cpu']}, "
        f"{hw['torch_threads']} torch threads), torch {hw['torch']}, Python {hw['python']}",
        f"- model: `{result['config_name']}` ({result['parameters']:,} parameters; dim {c['dim']}, "
        f"{c['n_layers']} layers, {c['n_heads']} heads, {c['n_kv_heads']} KV heads, vocab {c['vocab_size']}, "
        f"{c['dtype']}), untrained",
        f"- {result['decoding']} decoding after a {result['prompt_tokens']}-token TinyStories prompt",
    ]
    on_cpu = hw["device"].startswith("cpu")
    if on_cpu:
        lines.append("- tok/s and speed-up by wall clock; the last column compares the CPU time the process used, "
                     "which a busy shared machine does not inflate")
    if not on_cpu:
        lines.append("- static cache: every decode step replayed as one CUDA graph (recorded at the first step)")
    header = ("| new tokens | without cache (tok/s) | preallocated cache (tok/s) | speed-up | static cache (tok/s) "
              "| speed-up |")
    lines += ["", header + (" speed-ups (CPU time) |" if on_cpu else ""),
              "|---:|---:|---:|---:|---:|---:|" + ("---:|" if on_cpu else "")]
    for r in result["rows"]:
        lines.append(f"| {r['new_tokens']:,} | {r['no_cache_tokens_per_s']:,.1f} | {r['cache_tokens_per_s']:,.1f} "
                     f"| {r['speedup']:.1f}x | {r['static_cache_tokens_per_s']:,.1f} | {r['speedup_static']:.1f}x |"
                     + (f" {r['speedup_cpu_time']:.1f}x, {r['speedup_static_cpu_time']:.1f}x |" if on_cpu else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--config", default="book", choices=sorted(CONFIGS), help="model shape (default book)")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="override the config's dtype (float32, bfloat16, float16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is steadier on a shared machine")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads={args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    result = run(args.config, args.device, tuple(args.new_tokens), args.prompt_tokens, args.dtype,
                 save=not args.no_save)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
