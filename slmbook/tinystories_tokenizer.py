"""The book's own TinyStories tokenizer: a 4,096-token byte-level BPE, shipped and loaded offline (chapter 6).

Why not GPT-2's 50,257 tokens: in a small model the embedding table is most of the parameters (97% of
the `tiny` model), and children's stories use few of GPT-2's web tokens. A BPE trained on TinyStories
itself spells a validation story in a few percent more tokens than GPT-2 with a twelfth of the
vocabulary; its size was chosen by measurement (benchmarks/tinystories_vocab_size.py, results in
benchmarks/results/tinystories_vocab_size.md).

Training data: every TinyStories text file (`*.txt`, stories separated by `<|endoftext|>` lines) of a
folder except the official validation stories (`tinystories-valid-v1-head1000.txt`), normalized as
the token files are (`slmbook.curation.normalize`), exact duplicates kept once, and every story equal
to a validation story left out: the tokenizer never sees the stories the book's models are judged on.

    python -m slmbook.tinystories_tokenizer --out my-tokenizer.json                 # the shipped stories
    python -m slmbook.tinystories_tokenizer --source DIR --out slmbook/resources/tokenizers/tinystories-4k.json

The shipped file was built by the second command with DIR = all the TinyStories text at hand (its
"provenance" entry lists the files and counts), then `python benchmarks/tinystories_vocab_size.py
--source DIR --record` added the measurement that chose its size (`vocabulary_study()`). The default
source, the stories shipped with the package, is a tenth of that text: a tokenizer rebuilt from it
shares about 84% of its tokens (as byte strings) with the shipped one.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import Counter
from pathlib import Path

import tiktoken

from slmbook.bpe import BPETokenizer
from slmbook.data import iter_story_files, resource_path, story_files

VOCAB_SIZE = 4096  # 256 bytes + 3,839 merges + <|endoftext|>
TOKENIZER_NAME = "tinystories-4k"
TOKENIZER_FILE = "tinystories-4k.json"


def tokenizer_path() -> Path:
    """The shipped tokenizer file (merges as JSON, readable vocabulary, provenance)."""
    return resource_path("tokenizers", TOKENIZER_FILE)


def training_stories(source: str | Path | None = None) -> tuple[list[str], dict]:
    """The normalized, exact-deduplicated training stories of a folder of TinyStories text (None = the
    stories shipped with slmbook), every story equal to a validation story left out, and a report of
    what was read and removed. Which file holds the validation stories: `slmbook.data.story_files`."""
    from slmbook.curation import normalize, story_hash

    train_files, validation = story_files(source if source is not None else resource_path("tinystories"))
    validation_hashes = {story_hash(normalize(s)[0]) for s in iter_story_files([validation])}
    seen: set[str] = set()
    stories: list[str] = []
    removed: Counter = Counter()
    for story in iter_story_files(train_files):
        story = normalize(story)[0]
        h = story_hash(story)
        if h in validation_hashes:
            removed["in validation"] += 1
        elif h in seen:
            removed["exact duplicates"] += 1
        else:
            seen.add(h)
            stories.append(story)
    report = {
        "files": [p.name for p in train_files],
        "validation_file": validation.name,
        "validation_stories_kept_out": len(validation_hashes),
        "stories": len(stories),
        "bytes": sum(len(s.encode("utf-8")) for s in stories),
        "removed": dict(removed),
    }
    return stories, report


def tokenizer_name(vocab_size: int) -> str:
    return f"tinystories-{vocab_size // 1024}k" if vocab_size % 1024 == 0 else f"tinystories-{vocab_size}"


def train_tokenizer(source: str | Path | None = None, vocab_size: int = VOCAB_SIZE,
                    progress: bool = False) -> tuple[BPETokenizer, dict]:
    """A byte-level BPE of `vocab_size` tokens (with `<|endoftext|>`) trained on `training_stories(source)`;
    returns it and its provenance (data read, seconds)."""
    start = time.perf_counter()
    stories, report = training_stories(source)
    tokenizer = BPETokenizer.train(stories, vocab_size, progress=progress, name=tokenizer_name(vocab_size))
    report.update(vocab_size=tokenizer.n_vocab, merges=len(tokenizer.merges),
                  seconds=round(time.perf_counter() - start, 1))
    return tokenizer, report


def save_tokenizer(tokenizer: BPETokenizer, path: str | Path, provenance: dict) -> Path:
    """`BPETokenizer.save`'s JSON with a "provenance" entry added (what it was trained on, and how)."""
    path = tokenizer.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["provenance"] = provenance
    path.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return path


@functools.lru_cache(maxsize=1)
def tinystories_tokenizer() -> BPETokenizer:
    """The shipped tokenizer as a `BPETokenizer` (readable pure-Python encoder, same ids as below)."""
    path = tokenizer_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped TinyStories tokenizer is missing; rebuild it with "
                                f"`python -m slmbook.tinystories_tokenizer --out {path}`")
    return BPETokenizer.load(path)


def vocabulary_study() -> dict | None:
    """The measurement that chose the vocabulary size, stored in the shipped file (chapter 6 shows it):
    per candidate size, bytes per token on the validation stories, the embedding's share of the reader
    models, and the validation bits per byte of the CPU reader model trained with it. None if absent."""
    return json.loads(tokenizer_path().read_text(encoding="utf-8"))["provenance"].get("vocabulary_study")


@functools.lru_cache(maxsize=1)
def tinystories_encoding() -> tiktoken.Encoding:
    """The shipped tokenizer as a `tiktoken.Encoding` (4,096 ids, `<|endoftext|>` = 4095), offline."""
    return tinystories_tokenizer().to_tiktoken()


def main(argv=None) -> int:
    first, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m slmbook.tinystories_tokenizer", description=first, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="folder of TinyStories .txt files (default: the stories shipped with slmbook)")
    p.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE,
                   help=f"tokens, <|endoftext|> included (default {VOCAB_SIZE})")
    args = p.parse_args(argv)
    try:
        tokenizer, report = train_tokenizer(args.source, args.vocab_size, progress=True)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report["command"] = "python -m slmbook.tinystories_tokenizer" + (
        f" --source {Path(args.source).name}/" if args.source else "") + f" --vocab-size {args.vocab_size}"
    path = save_tokenizer(tokenizer, args.out, report)
    print(f"{tokenizer!r} trained on {report['stories']:,} stories ({report['bytes'] / 1e6:.1f} MB; removed "
          f"{report['removed']}) in {report['seconds']} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
