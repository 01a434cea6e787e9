"""Chapter 14's data, prepared by the package: deduplicated TinyStories as token files in the data home.

    python -m slmbook.prepare                               # the stories shipped with slmbook (offline, seconds)
    python -m slmbook.prepare --stories-dir FOLDER          # a folder of TinyStories .txt files
    python -m slmbook.prepare --source hub                  # all of TinyStories through `datasets` (see below)
    python -m slmbook.train --config book                   # finds the prepared data by itself

Local source: every *.txt file of the folder (--stories-dir, else $SLMBOOK_TINYSTORIES_DIR, else the
stories shipped in slmbook/resources/tinystories) holds stories, each followed by a line
`<|endoftext|>`. All of them are training data except the official validation stories
(tinystories-valid-v1-head1000.txt; the shipped copy when the folder has none), which are the
validation set. Hub source: the train and validation splits of roneneldan/TinyStories, streamed.

`slmbook.dataloader.prepare_token_files` then normalizes every story, keeps one copy of exact
duplicates (stories recur across files), drops every training story equal to a validation story
and, for a local folder, near-duplicates too (MinHash; that step holds all stories in memory, so it
is off for the hub), and writes train.bin and validation.bin with the tokenizer named by
--tokenizer (`TOKENIZERS`). The folder is `data_dir(source, tokenizer)` under `data_home()`
($SLMBOOK_HOME, else ~/.cache/slmbook: the same for a source checkout and an installed package);
prepare_report.json there counts stories read, duplicates and validation overlap removed, tokens,
and the seconds of each stage.

How long the hub takes (measured here, the hub itself being unreachable): this pipeline without
near-deduplication (read, normalize, deduplicate, GPT-2 tokenize, write) handled the 3,216 shipped
stories at 5,300 to 7,100 stories per CPU second on 2 cores of an AMD EPYC, about a free Colab
machine's size (best of 3 to 5 runs, in three trials on a shared machine). The hub's ~2.1 M
stories therefore take about 5 to 7 minutes of CPU, plus the download of about 1.8 GB of story
text (2.1 M times the shipped stories' mean size) and `datasets`' own decoding, which could not be
measured offline. `python -m slmbook.prepare --measure` repeats the measurement on your machine.
The 27,000 stories of a local folder, near-deduplication included, took 28 s on the same machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

SOURCES = ("local", "hub")
HUB_DATASET = "roneneldan/TinyStories"
HUB_STORIES = 2.1e6  # train + validation stories of the hub data set (about), for the time estimate
VALIDATION_FILE = "tinystories-valid-v1-head1000.txt"  # the first 1,000 official validation stories
NEAR_THRESHOLD = 0.8  # Jaccard similarity of 5-word shingles above which two stories are near-duplicates
REPORT_FILE = "prepare_report.json"
STAGES = ("read", "normalize, deduplicate and write", "tokenize")  # the report's seconds


# --- where the data lives ---------------------------------------------------------------------------


def data_home() -> Path:
    """Where slmbook keeps prepared data: $SLMBOOK_HOME if set, else the per-user cache folder
    ($XDG_CACHE_HOME/slmbook or ~/.cache/slmbook). Independent of the working directory and of where
    the package is installed, so a notebook, the command line and a Colab install all find it."""
    if os.environ.get("SLMBOOK_HOME"):
        return Path(os.environ["SLMBOOK_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "slmbook"


def data_dir(source: str = "local", tokenizer: str = "gpt2") -> Path:
    """The folder holding train.bin and validation.bin of TinyStories from `source` in `tokenizer`'s ids."""
    _check_source(source)
    _check_tokenizer(tokenizer)
    return data_home() / "tinystories" / f"{source}-{tokenizer}"


def is_prepared(folder: str | Path) -> bool:
    folder = Path(folder)
    return all((folder / name).is_file() for name in ("train.bin", "validation.bin", REPORT_FILE))


def find_prepared(tokenizer: str = "gpt2") -> Path | None:
    """The prepared TinyStories in the data home, the hub's before a local folder's, or None."""
    for source in ("hub", "local"):
        if is_prepared(data_dir(source, tokenizer)):
            return data_dir(source, tokenizer)
    return None


# --- tokenizers ---------------------------------------------------------------------------------------


def _gpt2():
    from slmbook.tokenizer import gpt2_encoding

    return gpt2_encoding()


def _tinystories():
    from slmbook.tinystories_tokenizer import tinystories_encoding

    return tinystories_encoding()


# name -> a function returning the tokenizer (a tiktoken Encoding or anything with encode_ordinary,
# eot_token, n_vocab and name). A new tokenizer is one more entry here.
TOKENIZERS = {"gpt2": _gpt2, "tinystories-4k": _tinystories}


def load_tokenizer(name: str = "gpt2"):
    """The tokenizer registered as `name` in TOKENIZERS."""
    _check_tokenizer(name)
    return TOKENIZERS[name]()


def _check_tokenizer(name) -> None:
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer={name!r} is unknown; allowed: {sorted(TOKENIZERS)}")


def _check_source(source) -> None:
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; allowed: {SOURCES}")


# --- sources ------------------------------------------------------------------------------------------


def default_stories_dir() -> Path:
    """$SLMBOOK_TINYSTORIES_DIR if set, else the stories shipped with slmbook."""
    from slmbook.data import resource_path

    return Path(os.environ.get("SLMBOOK_TINYSTORIES_DIR") or resource_path("tinystories"))


def local_files(stories_dir: str | Path | None = None) -> tuple[list[Path], Path]:
    """(training files, validation file) of a folder of TinyStories text files (`slmbook.data.story_files`);
    None: `default_stories_dir()`."""
    from slmbook.data import story_files

    return story_files(stories_dir if stories_dir is not None else default_stories_dir())


def require_hub() -> None:
    """A RuntimeError saying why the hub source cannot run here: no `datasets`, or no hub."""
    from slmbook.hub import online

    if importlib.util.find_spec("datasets") is None:
        raise RuntimeError("source='hub' needs the `datasets` package: pip install datasets")
    if not online("huggingface.co"):
        raise RuntimeError(f"source='hub': the Hugging Face hub (huggingface.co) cannot be reached from this "
                           f"machine (or HF_HUB_OFFLINE is set), so {HUB_DATASET!r} cannot be streamed. Use "
                           f"source='local' with a folder of TinyStories .txt files (--stories-dir)")


def hub_stories(split: str) -> Iterator[str]:
    """Stories of `split` of roneneldan/TinyStories, streamed through `datasets` (needs the hub)."""
    require_hub()
    import datasets

    count = 0
    try:
        for row in datasets.load_dataset(HUB_DATASET, split=split, streaming=True):
            if row["text"].strip():
                count += 1
                yield row["text"].strip("\n")
    except Exception as error:  # network, authentication, cache: say where it stopped
        raise RuntimeError(f"source='hub': streaming {HUB_DATASET!r} split {split!r} failed after {count:,} "
                           f"stories ({type(error).__name__}: {error})") from error


def hub_split_size(split: str) -> int | None:
    """The number of stories the hub's metadata gives for `split` (for the progress bar), or None."""
    try:
        import datasets

        return datasets.load_dataset_builder(HUB_DATASET).info.splits[split].num_examples
    except Exception:  # no metadata: the bar just counts
        return None


# --- instrumentation: counts and seconds per stage ------------------------------------------------------


def _timed(stories: Iterable[str], seconds: Counter, counts: Counter, key: str) -> Iterator[str]:
    """`stories` unchanged, adding the time spent producing them to seconds['read'] and their number
    to counts[key]."""
    iterator = iter(stories)
    while True:
        start = time.perf_counter()
        try:
            story = next(iterator)
        except StopIteration:
            seconds["read"] += time.perf_counter() - start
            return
        seconds["read"] += time.perf_counter() - start
        counts[key] += 1
        yield story


class _TimedEncoding:
    """A tokenizer that adds the time spent encoding to seconds['tokenize']."""

    def __init__(self, encoding, seconds: Counter):
        self._encoding, self._seconds = encoding, seconds

    def __getattr__(self, name):
        return getattr(self._encoding, name)

    @property
    def name(self) -> str:
        return getattr(self._encoding, "name", type(self._encoding).__name__)

    def encode_ordinary(self, text: str) -> list[int]:
        start = time.perf_counter()
        try:
            return self._encoding.encode_ordinary(text)
        finally:
            self._seconds["tokenize"] += time.perf_counter() - start

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        start = time.perf_counter()
        try:
            batch = getattr(self._encoding, "encode_ordinary_batch", None)
            return batch(texts) if batch is not None else [self._encoding.encode_ordinary(t) for t in texts]
        finally:
            self._seconds["tokenize"] += time.perf_counter() - start


# --- preparing --------------------------------------------------------------------------------------------


def request(source: str, stories_dir: str | Path | None, tokenizer: str, near_threshold: float | None,
            limit: int | None) -> dict:
    """What a preparation was asked to do, recorded in its report: the same request finds the same data.
    Local files are named with their sizes, never with their machine's path."""
    asked = {"source": source, "tokenizer": tokenizer, "near_threshold": near_threshold, "limit": limit}
    if source == "local":
        train, validation = local_files(stories_dir)
        asked["files"] = {p.name: p.stat().st_size for p in [*train, validation]}
    else:
        asked["dataset"] = HUB_DATASET
    return asked


def _check_options(source, near_threshold, limit):
    _check_source(source)
    if near_threshold == "auto":
        near_threshold = NEAR_THRESHOLD if source == "local" else None
    if near_threshold == 0:
        near_threshold = None
    if near_threshold is not None:
        if isinstance(near_threshold, bool) or not isinstance(near_threshold, (int, float)) \
                or not 0 < near_threshold <= 1:
            raise ValueError(f"near_threshold={near_threshold!r}: allowed 'auto', None or 0 (off), or a number in (0, 1]")
        if source == "hub":
            raise ValueError(f"near_threshold={near_threshold!r} with source='hub': near-deduplication holds every "
                             "story in memory, too much for 2.1 M stories; use near_threshold=None")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit={limit!r}: allowed None (every story) or a positive number of training stories")
    return near_threshold


def prepare(source: str = "local", stories_dir: str | Path | None = None, out: str | Path | None = None,
            tokenizer: str = "gpt2", near_threshold: float | str | None = "auto", limit: int | None = None,
            progress: bool = True) -> dict:
    """Deduplicated TinyStories from `source` as token files in `out` (default `data_dir(source, tokenizer)`).

    near_threshold: 'auto' (0.8 for a local folder, off for the hub), None or 0 (off), or a Jaccard
    threshold in (0, 1]. limit: read only the first `limit` training stories (a quick trial).
    Returns the report also written to out/prepare_report.json.
    """
    from slmbook.dataloader import prepare_token_files

    near_threshold = _check_options(source, near_threshold, limit)
    encoding = load_tokenizer(tokenizer)
    out = Path(out) if out is not None else data_dir(source, tokenizer)
    asked = request(source, stories_dir, tokenizer, near_threshold, limit)
    seconds, read = Counter(), Counter()
    began = time.perf_counter()
    if source == "local":
        from slmbook.data import iter_story_files

        train_files, validation_file = local_files(stories_dir)
        train = (story for path in train_files for story in _timed(iter_story_files([path]), seconds, read, path.name))
        validation = _timed(iter_story_files([validation_file]), seconds, read, validation_file.name)
        inner_progress = progress
    else:
        from tqdm.auto import tqdm

        require_hub()  # before any file is touched
        train = _timed(tqdm(hub_stories("train"), total=hub_split_size("train"), desc=f"streaming {HUB_DATASET} train",
                            unit=" stories", disable=not progress), seconds, read, "train")
        validation = _timed(hub_stories("validation"), seconds, read, "validation")
        inner_progress = False  # the streaming bar counts; there is no near-deduplication pass to show
    if limit is not None:
        train = islice(train, limit)
    (out / REPORT_FILE).unlink(missing_ok=True)  # written last: a folder without it is not (yet) prepared
    result = prepare_token_files(train, _TimedEncoding(encoding, seconds), out, validation=validation,
                                 near_threshold=near_threshold, progress=inner_progress)
    total = time.perf_counter() - began
    removed = dict(result["removed"])
    t, v = result["train"], result["validation"]
    validation_names = {validation_file.name} if source == "local" else {"validation"}
    report = {
        "source": source,
        "tokenizer": tokenizer,
        "near_threshold": near_threshold,
        "stories_read": {"train": sum(n for k, n in read.items() if k not in validation_names),
                         "validation": sum(n for k, n in read.items() if k in validation_names)},
        "stories_read_per_input": dict(read),
        "exact_duplicates_removed": removed.get("exact duplicates", 0),
        "near_duplicates_removed": removed.get("near duplicates", 0),
        "validation_overlap_removed": removed.get("in validation", 0) + removed.get("near validation", 0),
        "empty_removed": removed.get("empty", 0),
        "removed": removed,
        "stories": {"train": t.n_stories, "validation": v.n_stories},
        "tokens": {"train": t.n_tokens, "validation": v.n_tokens},
        "bytes": {"train": t.n_bytes, "validation": v.n_bytes},
        "seconds": {"read": round(seconds["read"], 2),  # files or the hub stream
                    "normalize, deduplicate and write": round(total - seconds["read"] - seconds["tokenize"], 2),
                    "tokenize": round(seconds["tokenize"], 2), "total": round(total, 2)},
        "stories_per_s": round(sum(read.values()) / total, 1) if total else None,
        "files": ["train.bin", "validation.bin"],
        "machine": _machine(),
        "request": asked,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def _machine() -> str:
    from slmbook.hardware import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def read_report(folder: str | Path) -> dict | None:
    """The prepare_report.json of a prepared folder, or None."""
    path = Path(folder) / REPORT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_data(source: str = "local", stories_dir: str | Path | None = None, tokenizer: str = "gpt2",
                near_threshold: float | str | None = "auto", limit: int | None = None, out: str | Path | None = None,
                progress: bool = True) -> Path:
    """The folder of prepared TinyStories for this request, preparing it first when it is missing or was
    made from other inputs or settings (what chapter 14 calls). Returns the folder."""
    near_threshold = _check_options(source, near_threshold, limit)
    folder = Path(out) if out is not None else data_dir(source, tokenizer)
    asked = request(source, stories_dir, tokenizer, near_threshold, limit)
    if is_prepared(folder) and (read_report(folder) or {}).get("request") == asked:
        return folder
    prepare(source, stories_dir, folder, tokenizer, near_threshold, limit, progress)
    return folder


# --- measuring the time estimate -----------------------------------------------------------------------


def measure(repeats: int = 3) -> dict:
    """Seconds of the whole pipeline without near-deduplication (what the hub source runs) on the
    shipped stories, best of `repeats`, extrapolated to the hub's ~2.1 M stories. The extrapolation
    uses CPU seconds (the pipeline is mostly one Python thread, so on an otherwise idle machine its
    wall time is about its CPU time; on a shared one the wall clock also counts other programs)."""
    import tempfile

    from slmbook.data import resource_path

    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            cpu = time.process_time()
            report = prepare("local", resource_path("tinystories"), Path(tmp), near_threshold=None, progress=False)
            report["cpu_seconds"] = time.process_time() - cpu
            if best is None or report["cpu_seconds"] < best["cpu_seconds"]:
                best = report
    stories = sum(best["stories_read"].values())
    rate = stories / best["cpu_seconds"]
    text_bytes = sum(best["bytes"].values()) / (best["stories"]["train"] + best["stories"]["validation"])
    return {"stories": stories, "wall_seconds": best["seconds"], "cpu_seconds": round(best["cpu_seconds"], 2),
            "stories_per_cpu_s": round(rate), "hub_minutes": round(HUB_STORIES / rate / 60, 1),
            "hub_text_gb": round(HUB_STORIES * text_bytes / 1e9, 2), "machine": best["machine"]}


# --- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    first, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m slmbook.prepare", description=first, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="local", help=f"one of {SOURCES} (default local)")
    p.add_argument("--stories-dir", help="folder of TinyStories .txt files (local source; default: "
                                         "$SLMBOOK_TINYSTORIES_DIR, else the stories shipped with slmbook)")
    p.add_argument("--tokenizer", default="gpt2", help=f"one of {sorted(TOKENIZERS)} (default gpt2)")
    p.add_argument("--near", type=float, default=None,
                   help=f"near-duplicate Jaccard threshold (default {NEAR_THRESHOLD} for local, off for the hub; 0 = off)")
    p.add_argument("--limit", type=int, help="read only this many training stories (a quick trial)")
    p.add_argument("--out", help="output folder (default: <data home>/tinystories/<source>-<tokenizer>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--measure", action="store_true", help="time the pipeline on the shipped stories and estimate "
                                                          "the hub source's minutes; prepares nothing")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.measure:
        print(json.dumps(measure(), indent=1))
        return 0
    try:
        report = prepare(args.source, args.stories_dir, args.out, args.tokenizer,
                         "auto" if args.near is None else args.near, args.limit, progress=not args.no_progress)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else data_dir(args.source, args.tokenizer)
    r, s = report, report["seconds"]
    print(f"read {r['stories_read']['train']:,} training and {r['stories_read']['validation']:,} validation stories; "
          f"removed {r['exact_duplicates_removed']:,} exact duplicates, {r['near_duplicates_removed']:,} near-duplicates "
          f"and {r['validation_overlap_removed']:,} training stories equal or near to a validation story")
    print(f"train:      {r['stories']['train']:,} stories, {r['tokens']['train']:,} tokens")
    print(f"validation: {r['stories']['validation']:,} stories, {r['tokens']['validation']:,} tokens")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    print(f"wrote {out} (train.bin, validation.bin, {REPORT_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
