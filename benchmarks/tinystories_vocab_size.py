"""How large should the book's TinyStories tokenizer be? Bytes per token, embedding share, and bits per byte.

    python benchmarks/tinystories_vocab_size.py --source DIR          # the measurement behind the shipped tokenizer
    python benchmarks/tinystories_vocab_size.py --no-train            # only the cheap columns (seconds)

One byte-level BPE of the largest size is trained (slmbook.tinystories_tokenizer: the training stories of
DIR, validation stories kept out); a BPE with k merges is exactly the first k merges of a longer run,
so every smaller size is a prefix of it. For each size:
- bytes per token and tokens per story on the 1,000 official validation stories (normalized, as the
  token files hold them): how much text one prediction covers;
- the embedding's share of the parameters of the `reader` (CPU) and `reader-gpu` model shapes;
- bits per byte on the validation stories of the `reader` preset (the same shape, schedule and steps,
  only the vocabulary changed) trained on the shipped sample on this CPU, with its training time.
Writes benchmarks/results/tinystories_vocab_size.{json,md} with the hardware named; --record also
copies the table into the shipped tokenizer file (provenance "vocabulary_study"), where chapter 6 reads
it (an installed package has no benchmarks/ folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a source checkout without an install

from slmbook.bpe import BPETokenizer  # noqa: E402
from slmbook.config import READER, READER_GPU  # noqa: E402
from slmbook.data import command_line  # noqa: E402
from slmbook.scaling import count_parameters, embedding_share  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SIZES = (512, 1024, 2048, 4096, 8192)


def validation_stories() -> list[str]:
    from slmbook.curation import normalize
    from slmbook.data import SAMPLE_FILES, read_story_file, resource_path

    return [normalize(s)[0] for s in read_story_file(resource_path("tinystories", SAMPLE_FILES["validation"]))]


def prefix(tokenizer: BPETokenizer, size: int) -> BPETokenizer:
    """The BPE of `size` tokens (with <|endoftext|>) made by the first merges of `tokenizer`."""
    from slmbook.tinystories_tokenizer import tokenizer_name

    return BPETokenizer(tokenizer.merges[: size - 256 - len(tokenizer.special_tokens)], tokenizer.special_tokens,
                        tokenizer.pattern, tokenizer_name(size))


def train_reader(tokenizer: BPETokenizer, steps: int | None, threads: int | None = None) -> dict:
    """The reader preset with `tokenizer`'s vocabulary, trained on the shipped sample tokenized with it."""
    with tempfile.TemporaryDirectory() as tmp:
        return _train_reader(tokenizer, steps, threads, Path(tmp))


def _train_reader(tokenizer: BPETokenizer, steps: int | None, threads: int | None, folder: Path) -> dict:
    from slmbook.data import SAMPLE_FILES, resource_path
    from slmbook.dataloader import prepare_token_files
    from slmbook.training import Trainer
    from slmbook.training_config import training_preset

    if threads:
        torch.set_num_threads(threads)
    encoding = tokenizer.to_tiktoken()
    prepare_token_files([resource_path("tinystories", SAMPLE_FILES["train"])], encoding, folder,
                        validation=[resource_path("tinystories", SAMPLE_FILES["validation"])], progress=False)
    preset = training_preset("reader")
    steps = steps or preset.steps
    config = preset.replace(model=preset.model.replace(vocab_size=encoding.n_vocab), steps=steps,
                            warmup_steps=preset.warmup_steps * steps // preset.steps, device="cpu", eval_interval=0,
                            sample_tokens=0)
    trainer = Trainer(config, folder / "train.bin", folder / "validation.bin", encoding=encoding, progress=False)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    while trainer.step < config.steps:
        trainer.train_step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = trainer.evaluate(0)
    return {"parameters": trainer.model.num_parameters(), "steps": config.steps, "train_s": wall, "cpu_s": cpu,
            "load_before": load, "load_after": os.getloadavg()[0], "val_loss": result["val_loss"],
            "val_bpb": result["val_bpb"], "epochs": trainer.train_data.epochs(config.steps),
            "sample": trainer.sample(60, seed=0), "torch_threads": torch.get_num_threads()}


def train_many(tokenizers: dict, steps: dict, jobs: int, threads: int | None) -> dict:
    """size -> train_reader(...) result, `jobs` models at a time, each in its own process."""
    from concurrent.futures import ProcessPoolExecutor

    results = {}
    with ProcessPoolExecutor(jobs) as pool:
        futures = {size: pool.submit(train_reader, tokenizers[size], steps[size], threads) for size in tokenizers}
        for size, future in futures.items():
            results[size] = future.result()
            print(f"vocabulary {size:,}, {results[size]['steps']} steps: {results[size]['val_bpb']:.3f} bits/byte, "
                  f"{results[size]['cpu_s']:.0f} CPU s", flush=True)
    return results


def run(source: str | None, sizes: list[int], train: bool, steps: int | None, jobs: int = 1,
        threads: int | None = None, equal_compute: bool = False, reuse: dict | None = None) -> dict:
    """The table. equal_compute: also train every other size for as many steps as the shipped size's
    CPU seconds buy it. reuse: size -> an earlier run's "reader_model" (with the same steps), not retrained."""
    from slmbook.hardware import cpu_name
    from slmbook.tinystories_tokenizer import tinystories_tokenizer, train_tokenizer
    from slmbook.tokenizer import gpt2_encoding
    from slmbook.training_config import training_preset

    largest, provenance = train_tokenizer(source, max(sizes))
    shipped = tinystories_tokenizer()
    stories = validation_stories()
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    rows, models, equal = [], dict(reuse or {}), {}
    if train:
        todo = [size for size in sizes if size not in models]
        models |= train_many({size: prefix(largest, size) for size in todo}, {size: steps for size in todo}, jobs,
                             threads)
    if train and equal_compute:
        from slmbook.tinystories_tokenizer import VOCAB_SIZE

        ref = models[VOCAB_SIZE]
        others = [size for size in sizes if size != VOCAB_SIZE]
        equal = train_many({size: prefix(largest, size) for size in others},
                           {size: round(ref["steps"] * ref["cpu_s"] / models[size]["cpu_s"]) for size in others},
                           jobs, threads)
    for size in sizes:
        tokenizer = prefix(largest, size)
        encoding = tokenizer.to_tiktoken()
        tokens = sum(map(len, encoding.encode_ordinary_batch(stories)))
        row = {"tokenizer": tokenizer.name, "vocab_size": encoding.n_vocab, "tokens_per_story": tokens / len(stories),
               "bytes_per_token": n_bytes / tokens,
               "is_the_shipped_tokenizer": tokenizer.merges == shipped.merges}
        for label, shape in (("reader", READER), ("reader_gpu", READER_GPU)):
            config = shape.replace(vocab_size=encoding.n_vocab)
            row[f"{label}_parameters"] = count_parameters(config)
            row[f"{label}_embedding_parameters"] = count_parameters(config) - count_parameters(config, embeddings=False)
            row[f"{label}_embedding_share"] = embedding_share(config)
        if train:
            row["reader_model"] = models[size]
        if size in equal:
            row["reader_model_equal_compute"] = equal[size]
        rows.append(row)
    gpt2 = gpt2_encoding()
    tokens = sum(map(len, gpt2.encode_ordinary_batch(stories)))
    rows.append({"tokenizer": "gpt2", "vocab_size": gpt2.n_vocab, "tokens_per_story": tokens / len(stories),
                 "bytes_per_token": n_bytes / tokens, "is_the_shipped_tokenizer": False,
                 **{f"{label}_{k}": v for label, shape in (("reader", READER), ("reader_gpu", READER_GPU))
                    for k, v in (("parameters", count_parameters(shape.replace(vocab_size=gpt2.n_vocab))),
                                 ("embedding_parameters", gpt2.n_vocab * shape.dim),
                                 ("embedding_share", embedding_share(shape.replace(vocab_size=gpt2.n_vocab))))}})
    return {"source": provenance, "validation_stories": len(stories), "validation_bytes": n_bytes,
            "hardware": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                         "torch": torch.__version__},
            "jobs": jobs, "reader_preset": training_preset("reader").to_dict(), "steps": steps, "rows": rows}


def report(result: dict, command: str) -> str:
    hw, src = result["hardware"], result["source"]
    lines = [
        "# How large should the TinyStories tokenizer be?",
        "",
        f"- command: `{command}`",
        f"- BPE trained on {src['stories']:,} deduplicated training stories ({src['bytes'] / 1e6:.1f} MB, "
        f"{len(src['files'])} files; the {src['validation_stories_kept_out']:,} validation stories kept out)",
        f"- bytes per token: on the {result['validation_stories']:,} official validation stories "
        f"({result['validation_bytes']:,} bytes)",
        f"- model columns: the `reader` preset ({READER.n_layers} layers, dim {READER.dim}) with only its vocabulary "
        f"changed, trained on the shipped sample, bits per byte on all validation stories",
        f"- hardware: {hw['cpu']}, {hw['cores']} cores; torch {hw['torch']}, Python {hw['python']}; "
        f"{result['jobs']} model(s) trained at a time"
        + (f", {result['rows'][0]['reader_model']['torch_threads']} torch thread(s) each"
           if "reader_model" in result["rows"][0] else "")
        + ". The machine may have been shared: each run's load average (1 minute, at its start) is given",
        "",
        "Model columns: the same steps for every size (the preset's), then (equal compute) as many steps as "
        "the shipped size's CPU seconds buy each size. CPU s: process time of the training steps; wall s "
        "and load: what else the machine ran.",
        "",
        "| tokenizer | vocabulary | bytes/token | tokens/story | reader: embedding share | reader-gpu: embedding share "
        "| reader: parameters | steps | val bits/byte | CPU s | wall s | load | equal compute: steps | val bits/byte |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        m, e = r.get("reader_model"), r.get("reader_model_equal_compute")
        name = r["tokenizer"] + (" (shipped)" if r["is_the_shipped_tokenizer"] else "")
        cells = [name, f"{r['vocab_size']:,}", f"{r['bytes_per_token']:.2f}", f"{r['tokens_per_story']:.1f}",
                 f"{r['reader_embedding_share']:.0%}", f"{r['reader_gpu_embedding_share']:.0%}",
                 f"{r['reader_parameters']:,}"]
        cells += ([f"{m['steps']}", f"{m['val_bpb']:.3f}", f"{m['cpu_s']:.0f}", f"{m['train_s']:.0f}",
                   f"{m['load_before']:.1f}"] if m else [""] * 5)
        cells += [f"{e['steps']}", f"{e['val_bpb']:.3f}"] if e else ["(reference)" if m and r["is_the_shipped_tokenizer"]
                                                                      else "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    samples = [(r["tokenizer"], r["reader_model"]["sample"]) for r in result["rows"] if r.get("reader_model")]
    if samples:
        lines += ["", "Samples (prompt 'Once upon a time', temperature 0.8, top-k 50, seed 0):", ""]
        lines += [f"- {name}: {text!r}" for name, text in samples]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="folder of TinyStories .txt files (default: the stories shipped with slmbook)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated vocabulary sizes")
    p.add_argument("--no-train", action="store_true", help="skip the model columns")
    p.add_argument("--steps", type=int, help="training steps of each model (default: the reader preset's)")
    p.add_argument("--threads", type=int, help="torch CPU threads of each model (default: torch's, one per core)")
    p.add_argument("--jobs", type=int, default=1, help="models trained at the same time (default 1)")
    p.add_argument("--equal-compute", action="store_true",
                   help="also train each other size for the CPU seconds the shipped size took")
    p.add_argument("--reuse", help="an earlier results .json: its equal-steps models are taken, not retrained")
    p.add_argument("--out", default=str(RESULTS / "tinystories_vocab_size"), help="output stem (.json and .md)")
    p.add_argument("--record", action="store_true", help="copy the table into the shipped tokenizer file")
    args = p.parse_args(argv)
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        p.error(f"--sizes={args.sizes!r}: comma-separated integers, e.g. 1024,4096")
    reuse = None
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text())
        reuse = {r["vocab_size"]: r["reader_model"] for r in earlier["rows"] if "reader_model" in r}
    result = run(args.source, sizes, not args.no_train, args.steps, args.jobs, args.threads, args.equal_compute, reuse)
    command = command_line("benchmarks/tinystories_vocab_size.py", argv, ("--source", "--reuse", "--out"))
    result["command"] = command
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report(result, command))
    print(report(result, command))
    if args.record:
        print(f"recorded in {record(result)}")
    return 0


def record(result: dict) -> Path:
    """Put the table (without the samples) into the shipped tokenizer's provenance."""
    from slmbook.tinystories_tokenizer import tokenizer_path

    path = tokenizer_path()
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for r in result["rows"]:
        row = {k: v for k, v in r.items() if k != "reader_model"}
        for key in ("reader_model", "reader_model_equal_compute"):
            if key in r:
                row[key] = {k: v for k, v in r[key].items() if k != "sample"}
        rows.append(row)
    data["provenance"]["vocabulary_study"] = {
        "command": result["command"], "hardware": result["hardware"], "jobs": result["jobs"],
        "validation_stories": result["validation_stories"], "validation_bytes": result["validation_bytes"],
        "trained_on_stories": result["source"]["stories"], "rows": rows}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
