"""Tokenization throughput (MB/s of UTF-8 text) on the shipped TinyStories sample (chapter 6).

Three encoders of the same text:
- our byte-level BPE (slmbook.bpe, trained here on the train sample) with its pure-Python encoder,
  without and with its pre-token cache (starting empty, as when a corpus is tokenized once);
- the same merges as a `tiktoken.Encoding` (`BPETokenizer.to_tiktoken()`, Rust), one thread and
  `encode_ordinary_batch` with all cores;
- GPT-2's encoding in tiktoken (`slmbook.tokenizer.gpt2_encoding`).
Our two encoders are checked to give the same ids before anything is timed. Prints a table and
writes it, with the hardware, to benchmarks/results/tokenization_throughput.{md,json}.

    python benchmarks/tokenization_throughput.py                  # vocabulary 4,096, 3 repeats
    python benchmarks/tokenization_throughput.py --vocab-size 8192 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import tiktoken
import torch

from slmbook.bpe import BPETokenizer
from slmbook.data import load_stories
from slmbook.hardware import cpu_name
from slmbook.tokenizer import gpt2_encoding

RESULTS = Path(__file__).parent / "results"


def hardware() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "tiktoken": tiktoken.__version__, "platform": f"{platform.system()} {platform.machine()}"}


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(vocab_size: int = 4096, repeats: int = 3, save: bool = True) -> dict:
    train = load_stories("train", source="sample", verbose=False)
    valid = load_stories("validation", source="sample", verbose=False)
    stories = train + valid
    text = "\n".join(stories)
    n_bytes = len(text.encode("utf-8"))

    start = time.perf_counter()
    bpe = BPETokenizer.train(train, vocab_size=vocab_size)
    train_seconds = time.perf_counter() - start
    ours_tiktoken = bpe.to_tiktoken()
    gpt2 = gpt2_encoding()

    ids_python = BPETokenizer(bpe.merges).encode_ordinary(text)
    if ours_tiktoken.encode_ordinary(text) != ids_python:
        raise AssertionError("tiktoken and the pure-Python encoder disagree: the benchmark would compare different work")

    def python_cold():
        BPETokenizer(bpe.merges).encode_ordinary(text)  # a fresh instance: empty pre-token cache

    def python_no_cache():
        BPETokenizer(bpe.merges, cache_size=0).encode_ordinary(text)  # every pre-token merged anew

    threads = os.cpu_count() or 1
    n_gpt2 = len(gpt2.encode_ordinary(text))
    rows = [
        ("our BPE, pure Python, no pre-token cache", vocab_size, python_no_cache, 1, len(ids_python)),
        ("our BPE, pure Python, pre-token cache (starts empty)", vocab_size, python_cold, 1, len(ids_python)),
        ("our BPE as tiktoken.Encoding, 1 thread", vocab_size, lambda: ours_tiktoken.encode_ordinary(text), repeats, len(ids_python)),
        (f"our BPE as tiktoken.Encoding, batch of stories, {threads} threads", vocab_size,
         lambda: ours_tiktoken.encode_ordinary_batch(stories, num_threads=threads), repeats, len(ids_python)),
        ("GPT-2 (tiktoken), 1 thread", gpt2.n_vocab, lambda: gpt2.encode_ordinary(text), repeats, n_gpt2),
        (f"GPT-2 (tiktoken), batch of stories, {threads} threads", gpt2.n_vocab,
         lambda: gpt2.encode_ordinary_batch(stories, num_threads=threads), repeats, n_gpt2),
    ]
    results = []
    for name, vocab, fn, reps, n_tokens in rows:
        seconds = best_time(fn, reps)
        results.append({"encoder": name, "vocab_size": vocab, "seconds": seconds, "MB_per_s": n_bytes / seconds / 1e6,
                        "tokens": n_tokens, "bytes_per_token": n_bytes / n_tokens})
    python_speed = results[0]["MB_per_s"]
    for r in results:
        r["speedup_vs_python"] = r["MB_per_s"] / python_speed
    result = {"benchmark": "tokenization_throughput", "text": "shipped TinyStories sample (train head + validation head)",
              "stories": len(stories), "bytes": n_bytes, "bpe_vocab_size": vocab_size, "bpe_train_seconds": train_seconds,
              "repeats": repeats, "hardware": hardware(), "rows": results}
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / "tokenization_throughput"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = [
        "# Tokenization throughput",
        "",
        f"- text: {result['text']}: {result['stories']:,} stories, {result['bytes'] / 1e6:.2f} MB of UTF-8",
        f"- our BPE: vocabulary {result['bpe_vocab_size']:,}, trained from scratch on the train head in "
        f"{result['bpe_train_seconds']:.1f} s (pure Python, incremental pair counts)",
        f"- hardware: {hw['cpu']}, {hw['cores']} cores; Python {hw['python']}, torch {hw['torch']}, "
        f"tiktoken {hw['tiktoken']} ({hw['platform']})",
        f"- best of {result['repeats']} runs (the pure-Python encoders: one run each; the cache maps a pre-token, "
        "such as ' the', to its ids, so a repeated word is merged only once)",
        "",
        "| encoder | vocabulary | seconds | MB/s | tokens | bytes/token | speed-up vs pure Python |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['encoder']} | {r['vocab_size']:,} | {r['seconds']:.3f} | {r['MB_per_s']:.2f} | {r['tokens']:,} | "
                     f"{r['bytes_per_token']:.2f} | {r['speedup_vs_python']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.vocab_size, args.repeats, save=not args.no_save)
    print(markdown(result))


if __name__ == "__main__":
    main()
