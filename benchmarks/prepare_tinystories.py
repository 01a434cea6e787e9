"""Build the token files of chapter 14's full run: deduplicated TinyStories, GPT-2 tokens, in .data/.

    python benchmarks/prepare_tinystories.py                      # the local stories (offline)
    python benchmarks/prepare_tinystories.py --source hub         # the full data set through `datasets`
    python -m slmbook.train --config book --data .data/tinystories

Local source: every *.txt of TinyStories stories in --stories-dir (default /work/shared/data/tinystories,
or $SLMBOOK_TINYSTORIES_DIR) is training data except the official validation stories
(tinystories-valid-v1-head1000.txt), which are the validation set. `slmbook.dataloader.prepare_token_files`
normalizes the text, removes exact duplicates and (here, by default) near-duplicates, and drops every
training story equal or near to a validation story, so the validation loss measures stories the model
never saw. Hub source: roneneldan/TinyStories train and validation splits (about 2.1 M stories, 470 M
GPT-2 tokens), exact deduplication only (near-deduplication holds everything in memory).

Writes <out>/train.bin, <out>/validation.bin (uint16 token ids, each story followed by <|endoftext|>),
their .json sidecars and prepare_report.json. .data/ is git-ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VALIDATION_FILE = "tinystories-valid-v1-head1000.txt"
DEFAULT_STORIES = os.environ.get("SLMBOOK_TINYSTORIES_DIR", "/work/shared/data/tinystories")


def local_sources(stories_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(training files, validation files) of a folder of TinyStories text files."""
    folder = Path(stories_dir)
    if not folder.is_dir():
        raise ValueError(f"--stories-dir={str(folder)!r} is not a folder; point it at TinyStories .txt files "
                         f"or use --source hub")
    validation = folder / VALIDATION_FILE
    if not validation.is_file():
        from slmbook.data import resource_path

        validation = resource_path("tinystories", VALIDATION_FILE)  # the same 1,000 stories ship with slmbook
    train = sorted(p for p in folder.glob("*.txt") if p.name != VALIDATION_FILE)
    if not train:
        raise ValueError(f"--stories-dir={str(folder)!r} holds no training .txt files")
    return train, [validation]


def hub_sources():
    """Training and validation stories streamed from the Hugging Face hub (needs the internet)."""
    import datasets

    def split(name):
        for row in datasets.load_dataset("roneneldan/TinyStories", split=name, streaming=True):
            if row["text"].strip():
                yield row["text"].strip("\n")

    return split("train"), split("validation")


def prepare(source: str = "local", stories_dir: str | Path = DEFAULT_STORIES,
            out: str | Path = REPO / ".data" / "tinystories", near_threshold: float | None = 0.8,
            progress: bool = True) -> dict:
    from slmbook.dataloader import prepare_token_files
    from slmbook.tokenizer import gpt2_encoding

    if source not in ("local", "hub"):
        raise ValueError(f"source={source!r}: allowed 'local' or 'hub'")
    start = time.perf_counter()
    if source == "local":
        train, validation = local_sources(stories_dir)
        inputs = [p.name for p in train] + [p.name for p in validation]
    else:
        train, validation = hub_sources()
        near_threshold = None
        inputs = ["hub:roneneldan/TinyStories"]
    result = prepare_token_files(train, gpt2_encoding(), out, validation=validation, near_threshold=near_threshold,
                                 progress=progress)
    report = {
        "source": source, "inputs": inputs, "near_threshold": near_threshold,
        "train": result["train"].__dict__, "validation": result["validation"].__dict__,
        "removed": dict(result["removed"]), "seconds": round(time.perf_counter() - start, 1),
    }
    Path(out, "prepare_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="local", choices=["local", "hub"])
    p.add_argument("--stories-dir", default=DEFAULT_STORIES)
    p.add_argument("--out", default=str(REPO / ".data" / "tinystories"))
    p.add_argument("--near", type=float, default=0.8, help="near-duplicate Jaccard threshold (local source; 0 = off)")
    args = p.parse_args(argv)
    try:
        report = prepare(args.source, args.stories_dir, args.out, near_threshold=args.near or None)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    t, v = report["train"], report["validation"]
    print(f"train:      {t['n_stories']:,} stories, {t['n_tokens']:,} tokens, {t['n_bytes']:,} bytes -> {t['path']}")
    print(f"validation: {v['n_stories']:,} stories, {v['n_tokens']:,} tokens, {v['n_bytes']:,} bytes -> {v['path']}")
    print(f"removed: {report['removed']}; {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
