"""Qwen3-0.6B's inference memory measured on a GPU, next to slmbook.memory's estimate (chapter 3).

    python benchmarks/qwen3_memory.py            # on a CUDA GPU: Qwen3-0.6B in bfloat16
    python benchmarks/qwen3_memory.py --smoke    # anywhere: the tiny config on the CPU (tensor bytes only)

The model is the real architecture, transformers' Qwen3ForCausalLM built from
`slmbook.config.QWEN3_0_6B`, with random weights: memory does not depend on the weights' values, and
the GPU machine this was measured on has no network to download them. Our own `QwenModel` is measured
the same way, with `slmbook.generation.generate`'s KV cache. For each, on the GPU:

- weights: `torch.cuda.memory_allocated` after the model is moved there, against `parameter_count x 2`;
- KV cache per token: the bytes of the cache's tensors after a prefill of `--prompt` tokens, divided by
  the tokens, against `2 x layers x kv_heads x head_dim x 2` (keys and values, bf16);
- peak while generating `--new` tokens greedily after the prompt: `torch.cuda.max_memory_allocated`,
  against `inference_memory(...)` (weights + cache + one position's logits). The difference is the
  working memory of the forward pass (the prefill's attention and feed-forward activations), which the
  estimate leaves out; it is printed as a share of the peak.

Writes benchmarks/results/qwen3_0.6b_memory_<gpu>.{json,md} (…_smoke.* with --smoke), with the hardware.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _cache_tensor_bytes(cache) -> int:
    """Bytes held by a KV cache's tensors: transformers' Cache (its layers' keys/values) or ours."""
    if hasattr(cache, "layers"):  # transformers >= 4.56: DynamicCache.layers[i].keys / .values
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    elif hasattr(cache, "key_cache"):  # older transformers
        tensors = list(cache.key_cache) + list(cache.value_cache)
    else:  # slmbook.kv_cache.KVCache
        tensors = list(cache.keys) + list(cache.values)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _allocated(device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def measure(config, device: torch.device, prompt: int, new: int, seed: int = 0) -> dict:
    """Both implementations' weights, KV cache per token and generation peak, with the estimates."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from slmbook.generation import generate
    from slmbook.hf_interop import hf_config_kwargs
    from slmbook.kv_cache import KVCache, config_kv_cache_bytes
    from slmbook.memory import inference_memory, parameter_count
    from slmbook.qwen import QwenModel

    dtype = torch.bfloat16
    torch.manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (1, prompt), device=device)
    estimate = inference_memory(config, 1, prompt + new, weight_dtype="bfloat16", kv_dtype="bfloat16")
    kv_per_token = config_kv_cache_bytes(config, 1, 1, "bfloat16")
    rows = {}
    for name in ("transformers Qwen3ForCausalLM", "slmbook QwenModel"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        before = _allocated(device)
        if name.startswith("transformers"):
            hf_config = Qwen3Config(**hf_config_kwargs(config), attn_implementation="sdpa")
            model = Qwen3ForCausalLM(hf_config).to(dtype).to(device).eval()
        else:
            model = QwenModel(config.replace(dtype="bfloat16")).to(dtype).to(device).eval()
        param_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
        weights = _allocated(device) - before if device.type == "cuda" else param_bytes
        with torch.no_grad():
            if name.startswith("transformers"):
                out = model(ids, use_cache=True, logits_to_keep=1)
                cache_bytes = _cache_tensor_bytes(out.past_key_values)
                del out
            else:
                cache = KVCache.for_model(model)  # grows with the tokens: holds exactly the prompt's
                model(ids, kv_cache=cache)
                cache_bytes = _cache_tensor_bytes(cache)
                del cache
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                start = torch.cuda.memory_allocated(device)
            if name.startswith("transformers"):
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0)
            else:
                generate(model, ids, new)
            peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
            resident = start - before if device.type == "cuda" else None  # weights + what the prefill left (buffers)
        rows[name] = {"weights_bytes": weights, "parameter_bytes": param_bytes,
                      "kv_bytes_per_token": cache_bytes / prompt, "generation_peak_bytes": peak,
                      "resident_before_generation_bytes": resident}
        del model
    return {"config": {"parameters": parameter_count(config), "layers": config.n_layers,
                       "kv_heads": config.n_kv_heads, "head_dim": config.head_dim, "vocab_size": config.vocab_size},
            "prompt_tokens": prompt, "new_tokens": new,
            "estimate": {"weights_bytes": estimate.components["weights"], "kv_bytes_per_token": kv_per_token,
                         "kv_cache_bytes": estimate.components["KV cache"], "logits_bytes": estimate.components["logits"],
                         "total_bytes": estimate.total},
            "measured": rows}


def report(result: dict) -> str:
    from slmbook.memory import format_bytes

    est = result["estimate"]
    hw = result["hardware"]
    lines = [f"# {result['model']} inference memory: measured vs estimated", "",
             f"`{result['command']}` on {hw['device']} (torch {hw['torch']}, transformers {hw['transformers']}), "
             f"bfloat16 weights and KV cache, batch 1, a {result['prompt_tokens']:,}-token prompt and "
             f"{result['new_tokens']:,} new tokens (greedy). Random weights of the real architecture. "
             "Estimate: `slmbook.memory.inference_memory` (weights + KV cache + one position's float32 logits).", "",
             "| implementation | weights | estimate | KV cache per token | estimate | generation peak | estimate "
             "| peak / estimate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["measured"].items():
        peak = row["generation_peak_bytes"]
        lines.append(f"| {name} | {format_bytes(row['weights_bytes'])} | {format_bytes(est['weights_bytes'])} "
                     f"| {row['kv_bytes_per_token']:,.0f} B | {est['kv_bytes_per_token']:,} B "
                     f"| {format_bytes(peak) if peak is not None else '-'} | {format_bytes(est['total_bytes'])} "
                     f"| {peak / est['total_bytes']:.3f} |" if peak is not None else
                     f"| {name} | {format_bytes(row['weights_bytes'])} | {format_bytes(est['weights_bytes'])} "
                     f"| {row['kv_bytes_per_token']:,.0f} B | {est['kv_bytes_per_token']:,} B | - | - | - |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny config on the CPU (no peak measured)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 2048; smoke 32)")
    parser.add_argument("--new", type=int, default=None, help="generated tokens (default 256; smoke 8)")
    args = parser.parse_args(argv)
    import transformers

    from slmbook.config import QWEN3_0_6B, TINY

    if args.smoke:
        device, config, name = torch.device("cpu"), TINY, "tiny"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: the peak is measured with torch.cuda's allocator; use --smoke on a CPU")
    else:
        device, config, name = torch.device("cuda"), QWEN3_0_6B, "Qwen3-0.6B"
    prompt = args.prompt or (32 if args.smoke else 2048)
    new = args.new if args.new is not None else (8 if args.smoke else 256)
    for flag, value in (("--prompt", prompt), ("--new", new)):
        if value < 1:
            raise SystemExit(f"{flag}={value}: must be at least 1")
    if prompt + new > config.context_length:
        raise SystemExit(f"--prompt + --new = {prompt + new} exceeds the context length {config.context_length}")
    result = measure(config, device, prompt, new)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    args_given = sys.argv[1:] if argv is None else argv
    result |= {"model": name, "command": " ".join(["python benchmarks/qwen3_memory.py", *args_given]),
               "hardware": {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                            "python": platform.python_version()}}
    slug = "smoke" if args.smoke else gpu.lower().replace(" ", "-")
    stem = RESULTS / f"qwen3_0.6b_memory_{slug}"
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")  # (with_suffix would cut at "0.6b")
    Path(f"{stem}.md").write_text(report(result))
    print(report(result))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
