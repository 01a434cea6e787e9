"""TinyStories, the real data the book trains on: from the Hugging Face hub, or the shipped sample.

`load_stories` reads the full data set through `datasets` (`roneneldan/TinyStories`) when the hub
answers, and otherwise the small real sample that ships with this package, saying which it used.
The sample is real TinyStories text (CDLA-Sharing-1.0; see resources/tinystories/NOTICE.md):
the first 1,000 stories of the official validation split and the first stories of the train split.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from pathlib import Path
from typing import Iterator

from slmbook.hub import online

HUB_DATASET = "roneneldan/TinyStories"
EOT = "<|endoftext|>"
SPLITS = ("train", "validation")
SOURCES = ("auto", "hub", "sample")
SAMPLE_FILES = {
    "train": "tinystories-train-v1-head.txt",
    "validation": "tinystories-valid-v1-head1000.txt",
}

log = logging.getLogger(__name__)


def resource_path(*parts: str) -> Path:
    """Path of a file shipped in slmbook/resources (works for editable and wheel installs)."""
    return Path(str(resources.files("slmbook").joinpath("resources", *parts)))


def benchmark_results(pattern: str, folder: str | Path | None = None) -> list[Path]:
    """Result files matching `pattern` (e.g. "gpu_measurements_*.json"), sorted, from `folder`, by default
    the source checkout's benchmarks/results/. Empty when there are none: a package installed without
    the repository (on Colab, say) has no benchmarks/ folder, and the chapters then say so."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def command_line(script: str, argv: list[str], path_flags: tuple[str, ...]) -> str:
    """`python <script> <argv>` as a results file records it: the value of each flag in `path_flags`
    shown by its last part, so that no machine's folders end up in benchmarks/results/."""
    shown, path_flag = [], False
    for arg in argv:
        shown.append(Path(arg).name or arg if path_flag else arg)
        path_flag = arg in path_flags
    return " ".join(["python", script, *shown])


def split_stories(text: str) -> list[str]:
    """Stories of a text whose stories are separated by `<|endoftext|>` lines, edges stripped."""
    return [s.strip("\n") for s in text.split(EOT) if s.strip()]


def read_story_file(path: str | Path) -> list[str]:
    """Stories of one local TinyStories-style text file (UTF-8, `<|endoftext|>` separated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such story file")
    return split_stories(path.read_text(encoding="utf-8"))


def iter_story_files(paths) -> Iterator[str]:
    """Stream stories from local text files one at a time, never holding a whole file in memory."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path={str(path)!r}: no such story file")
        lines: list[str] = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip() == EOT:
                    story = "".join(lines).strip("\n")
                    if story.strip():
                        yield story
                    lines = []
                else:
                    lines.append(line)
        story = "".join(lines).strip("\n")
        if story.strip():
            yield story


def story_files(stories_dir: str | Path) -> tuple[list[Path], Path]:
    """(training files, validation file) of a folder of TinyStories text files: every .txt file but the
    official validation stories, which come from the folder or else from the copy shipped with slmbook."""
    folder, official = Path(stories_dir), SAMPLE_FILES["validation"]
    if not folder.is_dir():
        raise ValueError(f"stories_dir={str(folder)!r} is not a folder; point it at a folder of TinyStories .txt "
                         f"files (story, then a line <|endoftext|>) or use source='hub'")
    validation = folder / official
    if not validation.is_file():
        validation = resource_path("tinystories", official)  # the same 1,000 stories ship with slmbook
    train = sorted(p for p in folder.glob("*.txt") if p.name != official)
    if not train:
        raise ValueError(f"stories_dir={str(folder)!r} holds no training .txt files (only {official} "
                         "or nothing)")
    return train, validation


def stories_source(source: str = "auto") -> str:
    """'hub' or 'sample': where `load_stories(source=source)` will read from."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; allowed: {SOURCES}")
    if source == "auto":
        return "hub" if online("huggingface.co") else "sample"
    return source


def load_stories(split: str = "train", source: str = "auto", limit: int | None = None,
                 verbose: bool = True) -> list[str]:
    """Real TinyStories stories of `split` ('train' or 'validation').

    source='auto' uses the hub when it answers and the shipped sample otherwise; 'hub' insists on
    the hub (clear error offline); 'sample' always uses the shipped sample. `limit` keeps the first
    `limit` stories.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; allowed: {SPLITS}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit={limit!r}: must be a positive integer or None")
    where = stories_source(source)
    if where == "hub":
        stories = _hub_stories(split, limit, insist=source == "hub")
        if stories is not None:
            if verbose:
                print(f"TinyStories {split}: {len(stories):,} stories from the Hugging Face hub ({HUB_DATASET})")
            return stories
        where = "sample"
    stories = _sample_stories(split)
    if limit is not None:
        stories = stories[:limit]
    if verbose:
        print(f"TinyStories {split}: {len(stories):,} stories from the sample shipped with slmbook "
              f"(offline; {SAMPLE_FILES[split]})")
    return list(stories)


def _hub_stories(split: str, limit: int | None, insist: bool) -> list[str] | None:
    """Stories from the hub through `datasets`, or None (with a warning) when that fails."""
    try:
        import datasets

        selection = split if limit is None else f"{split}[:{limit}]"
        table = datasets.load_dataset(HUB_DATASET, split=selection)
        return [row["text"].strip("\n") for row in table if row["text"].strip()]
    except Exception as error:  # network, auth or cache trouble: all mean "use the sample"
        if insist:
            raise RuntimeError(
                f"source='hub': could not load {HUB_DATASET!r} split {split!r} from the Hugging Face hub "
                f"({type(error).__name__}: {error}). Use source='sample' or 'auto' to work offline."
            ) from error
        log.warning("hub load of %s failed (%s); using the shipped sample", HUB_DATASET, error)
        return None


@functools.lru_cache(maxsize=None)
def _sample_stories(split: str) -> tuple[str, ...]:
    return tuple(read_story_file(resource_path("tinystories", SAMPLE_FILES[split])))
