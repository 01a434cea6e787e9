"""From stories to training batches: token files on disk and memory-mapped (x, y) windows (chapter 6).

1. `write_token_file` streams stories through a tokenizer into one flat binary file of token ids
   (uint16 when the vocabulary fits in 65,536 ids, else uint32), each story followed by the
   end-of-text id, plus a small JSON sidecar (dtype, counts, UTF-8 bytes for bits per byte).
2. `prepare_token_files` does it for a whole corpus: normalizes, removes exact duplicates (and,
   optionally, near-duplicates), keeps every validation story (and its copies) out of training,
   and writes train.bin / validation.bin.
3. `TokenBatches` memory-maps a token file and yields (x, y) int64 tensors of shape
   (batch, context): y is x shifted by one token, the next-token targets. Windows do not overlap;
   each epoch shuffles them with a seed; for distributed data parallel each rank reads a disjoint,
   equal-sized, contiguous part of the stream.
4. `StepBatches` numbers the batches by optimizer step for the training loop (chapter 14): the
   batch of step s is a pure function of (seed, s), and under data parallelism every process reads
   its own rows of it.

Nothing here loads a whole corpus into memory (except near-deduplication, which needs all
signatures at once): a file of stories is read story by story, tokens are written in chunks, and
batches read only the windows they need from the memory map.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from slmbook.config import positive_int
from slmbook.curation import near_duplicates, normalize, story_hash
from slmbook.data import iter_story_files


@dataclass(frozen=True)
class TokenFileInfo:
    """The JSON sidecar of a token file."""

    path: str
    dtype: str
    n_tokens: int
    n_stories: int
    n_bytes: int  # UTF-8 bytes of the stories (without separators): the denominator of bits per byte
    encoding: str
    eot_token: int
    n_vocab: int


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 if every id fits in 16 bits (GPT-2's 50,257 do), else uint32."""
    if not isinstance(n_vocab, int) or n_vocab < 1:
        raise ValueError(f"n_vocab={n_vocab!r}: must be a positive integer")
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def _encode_many(encoding, texts: list[str]) -> list[list[int]]:
    batch = getattr(encoding, "encode_ordinary_batch", None)
    if batch is not None:  # tiktoken: Rust, several threads
        return batch(texts)
    return [encoding.encode_ordinary(t) for t in texts]


def write_token_file(stories: Iterable[str], encoding, path: str | Path, chunk_stories: int = 2048,
                     progress: bool = True, total: int | None = None) -> TokenFileInfo:
    """Tokenize `stories` (streamed, `chunk_stories` at a time) into `path`, one eot id after each.

    `encoding`: a tiktoken Encoding or any tokenizer with `encode_ordinary`, `eot_token`, `n_vocab`.
    """
    for attr in ("encode_ordinary", "eot_token", "n_vocab"):
        if not hasattr(encoding, attr):
            raise TypeError(f"encoding={encoding!r} has no {attr!r}: pass a tiktoken Encoding or a slmbook tokenizer")
    if encoding.eot_token is None:
        raise ValueError(f"encoding={encoding!r} has no end-of-text token to separate stories")
    if isinstance(stories, str):
        raise TypeError("stories must be an iterable of str (one per story), not one str")
    dtype = token_dtype(encoding.n_vocab)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_tokens = n_stories = n_bytes = 0
    stories = iter(stories)
    bar = tqdm(total=total, desc=f"tokenizing {path.name}", unit=" stories", disable=not progress)
    with path.open("wb") as f:
        while chunk := list(islice(stories, chunk_stories)):
            for story in chunk:
                if not isinstance(story, str):
                    raise TypeError(f"stories must yield str, got {type(story).__name__}")
            ids = []
            for story_ids in _encode_many(encoding, chunk):
                ids.extend(story_ids)
                ids.append(encoding.eot_token)
            array = np.asarray(ids, dtype=np.int64)
            if array.size and (array.max() >= encoding.n_vocab or array.min() < 0):
                bad = array[(array < 0) | (array >= encoding.n_vocab)][0]
                raise ValueError(f"{path}: encoding={encoding!r} produced token id {bad}, outside its own vocabulary "
                                 f"0..{encoding.n_vocab - 1} (n_vocab={encoding.n_vocab})")
            array.astype(dtype).tofile(f)
            n_tokens += array.size
            n_stories += len(chunk)
            n_bytes += sum(len(s.encode("utf-8")) for s in chunk)
            bar.update(len(chunk))
    bar.close()
    info = TokenFileInfo(str(path), dtype.name, n_tokens, n_stories, n_bytes, getattr(encoding, "name", type(encoding).__name__),
                         int(encoding.eot_token), int(encoding.n_vocab))
    path.with_suffix(".json").write_text(json.dumps(asdict(info), indent=1) + "\n", encoding="utf-8")
    return info


TOKEN_DTYPES = ("uint16", "uint32")


def read_token_info(path: str | Path) -> TokenFileInfo:
    """The JSON sidecar of token file `path`, every field checked; errors name the sidecar."""
    sidecar = Path(path).with_suffix(".json")
    try:
        values = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{sidecar}: not a JSON sidecar of a token file ({error}); write_token_file "
                         "writes it next to the .bin") from error
    if not isinstance(values, dict):
        raise ValueError(f"{sidecar}: holds a JSON {type(values).__name__}, expected an object with the fields "
                         f"{list(TokenFileInfo.__dataclass_fields__)}")
    fields = list(TokenFileInfo.__dataclass_fields__)
    missing, unknown = [f for f in fields if f not in values], sorted(set(values) - set(fields))
    if missing or unknown:
        raise ValueError(f"{sidecar}: missing fields {missing}, unknown fields {unknown}; a token-file sidecar "
                         f"has exactly {fields}")
    for name in ("n_tokens", "n_stories", "n_bytes", "eot_token", "n_vocab"):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "n_vocab" else 0):
            raise ValueError(f"{sidecar}: {name}={value!r} must be an integer >= {1 if name == 'n_vocab' else 0}")
    for name in ("path", "encoding", "dtype"):
        if not isinstance(values[name], str):
            raise ValueError(f"{sidecar}: {name}={values[name]!r} must be a string")
    if values["dtype"] not in TOKEN_DTYPES:
        raise ValueError(f"{sidecar}: dtype={values['dtype']!r} is not a token dtype; allowed {TOKEN_DTYPES}")
    if values["n_vocab"] > np.iinfo(values["dtype"]).max + 1:
        raise ValueError(f"{sidecar}: n_vocab={values['n_vocab']} ids do not fit in dtype={values['dtype']!r}")
    if values["eot_token"] >= values["n_vocab"]:
        raise ValueError(f"{sidecar}: eot_token={values['eot_token']} is not below n_vocab={values['n_vocab']}")
    return TokenFileInfo(**values)


def read_token_file(path: str | Path, check_ids: bool = True) -> tuple[np.memmap, TokenFileInfo]:
    """The token ids of a file written by `write_token_file`, memory-mapped (read-only), and its info.

    The file must agree with its sidecar (size, dtype, count), and with `check_ids` every id is
    checked to be below the sidecar's n_vocab: one vectorised pass over the map, far cheaper than a
    training step per token, so a corrupt or foreign file fails here, naming the file, instead of an
    IndexError in the middle of training. Every error names the file.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path={path!r}: expected a str or pathlib.Path of a token file (.bin)")
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: expected a token file and its {sidecar.name} (write_token_file makes both)")
    info = read_token_info(path)
    dtype = np.dtype(info.dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {info.dtype} tokens ({dtype.itemsize} bytes "
                         f"each): the file is truncated or not a token file")
    if size // dtype.itemsize != info.n_tokens:
        raise ValueError(f"{path}: holds {size // dtype.itemsize} tokens but {sidecar.name} says {info.n_tokens}")
    if size == 0:  # np.memmap cannot map an empty file; a corpus with no stories is one
        return np.zeros(0, dtype=dtype), info
    tokens = np.memmap(path, dtype=dtype, mode="r")
    if check_ids:
        scan_token_ids(tokens, info.n_vocab, path)
    return tokens, info


def scan_token_ids(tokens: np.ndarray, n_vocab: int, path: str | Path, chunk: int = 1 << 26) -> None:
    """A ValueError naming `path` and the first id >= n_vocab. A max over chunks of the map: the
    file is read once, and no copy of it is held."""
    for start in range(0, len(tokens), chunk):
        part = tokens[start:start + chunk]
        if part.max() >= n_vocab:
            first = start + int(np.argmax(part >= n_vocab))
            raise ValueError(f"{path}: token id {int(tokens[first])} at position {first} is not below the sidecar's "
                             f"n_vocab={n_vocab} (allowed ids 0..{n_vocab - 1}): the file is corrupt or was written "
                             "with another tokenizer")


# --- splitting and preparing a corpus -----------------------------------------------------------


def in_validation(story: str, val_fraction: float, seed: int = 0) -> bool:
    """Hash-based split: the same story (up to whitespace) always lands on the same side, whatever
    the order of the data, so copies of a validation story can never end up in training."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}: must be in [0, 1)")
    digest = hashlib.blake2b(f"{seed}:{story_hash(story)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def split_by_story(stories: Iterable[str], val_fraction: float = 0.05, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, validation) stories by `in_validation`."""
    train, val = [], []
    for story in stories:
        (val if in_validation(story, val_fraction, seed) else train).append(story)
    return train, val


def iter_stories(sources: Iterable[str | Path]) -> Iterator[str]:
    """Stories from a mix of sources: a `str` is one story, a `Path` is a file of stories
    (`<|endoftext|>` separated, read one story at a time)."""
    if isinstance(sources, (str, Path)):
        raise TypeError("sources must be an iterable of stories (str) and/or story files (pathlib.Path)")
    for source in sources:
        if isinstance(source, Path):
            try:
                yield from iter_story_files([source])
            except UnicodeDecodeError as error:
                raise ValueError(f"{source}: not a UTF-8 text file of stories ({error})") from error
        elif isinstance(source, str):
            yield source
        else:
            raise TypeError(f"source {source!r}: expected a str (a story) or a pathlib.Path (a story file)")


def prepare_token_files(train: Iterable[str | Path], encoding, out_dir: str | Path, validation: Iterable[str | Path] | None = None,
                        val_fraction: float = 0.05, seed: int = 0, near_threshold: float | None = None,
                        progress: bool = True) -> dict:
    """Clean, deduplicate and split a corpus, then write out_dir/train.bin and out_dir/validation.bin.

    - every story is normalized (`curation.normalize`: mojibake repair, NFC, line endings);
    - exact duplicates (up to whitespace) are kept once;
    - with `validation` given, those stories are the validation set and any training story equal
      to one of them is dropped; without it, `val_fraction` of the stories go to validation by
      hash (`in_validation`);
    - `near_threshold` (e.g. 0.8) also drops near-duplicates (MinHash + LSH): a training story
      near a validation story, and all but one of each group within training. This step holds the
      corpus in memory.

    Returns {'train': TokenFileInfo, 'validation': TokenFileInfo, 'removed': Counter of reasons}.
    """
    out_dir = Path(out_dir)
    removed: Counter = Counter()
    seen: set[str] = set()

    def cleaned(sources) -> Iterator[str]:
        for story in iter_stories(sources):
            story = normalize(story)[0]
            if not story.strip():
                removed["empty"] += 1
                continue
            yield story

    if validation is not None:
        val_stories = []
        for story in cleaned(validation):
            h = story_hash(story)
            if h in seen:
                removed["exact duplicates"] += 1
            else:
                seen.add(h)
                val_stories.append(story)
        val_hashes = set(seen)

        def train_stream() -> Iterator[str]:
            for story in cleaned(train):
                h = story_hash(story)
                if h in seen:
                    removed["in validation" if h in val_hashes else "exact duplicates"] += 1
                    continue
                seen.add(h)
                yield story
    else:
        val_stories = []

        def train_stream() -> Iterator[str]:
            for story in cleaned(train):
                h = story_hash(story)
                if h in seen:
                    removed["exact duplicates"] += 1
                    continue
                seen.add(h)
                if in_validation(story, val_fraction, seed):
                    val_stories.append(story)
                else:
                    yield story

    train_stories: Iterable[str] = train_stream()
    # train.bin is written first: with the hash split, that pass also collects the validation stories
    if near_threshold is not None:  # near-dedup needs all stories at once
        train_stories = list(train_stories)
        everything = val_stories + train_stories
        near = near_duplicates(everything, near_threshold, seed=seed, progress=progress)
        drop = set()
        for cluster in near.clusters:
            vals = [i for i in cluster if i < len(val_stories)]
            trains = [i for i in cluster if i >= len(val_stories)]
            if vals:
                drop.update(trains)
                removed["near validation"] += len(trains)
            else:
                drop.update(trains[1:])
                removed["near duplicates"] += len(trains) - 1
        train_stories = [s for i, s in enumerate(train_stories, start=len(val_stories)) if i not in drop]
    train_info = write_token_file(train_stories, encoding, out_dir / "train.bin", progress=progress,
                                  total=len(train_stories) if isinstance(train_stories, list) else None)
    val_info = write_token_file(val_stories, encoding, out_dir / "validation.bin", progress=progress, total=len(val_stories))
    return {"train": train_info, "validation": val_info, "removed": removed}


# --- batches ------------------------------------------------------------------------------------


class TokenBatches:
    """(x, y) int64 batches of shape (batch_size, context_length) from a memory-mapped token file.

    The stream is cut into non-overlapping windows of context_length + 1 tokens (x = the first
    context_length, y = the last context_length). With world_size > 1, rank r reads only the r-th of
    world_size equal contiguous parts of the windows (the remainder is dropped so every rank does
    the same number of steps). Each epoch visits every window of the part once, in an order fixed
    by (seed, epoch, rank); shuffle=False reads them in stream order (for evaluation).
    """

    def __init__(self, path: str | Path, batch_size: int, context_length: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, device: str | torch.device = "cpu"):
        for name, value in (("batch_size", batch_size), ("context_length", context_length), ("world_size", world_size)):
            positive_int(name, value)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}: must be an integer in 0..world_size-1 = 0..{world_size - 1}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed={seed!r}: must be a non-negative integer")
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r}: must be True or False")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device={device!r} is not a torch device name ({error})") from None
        self.tokens, self.info = read_token_file(path)
        self.batch_size, self.context_length = batch_size, context_length
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.drop_last = drop_last
        self.device = torch.device(device)
        n_windows = max(0, len(self.tokens) - 1) // context_length
        per_rank = n_windows // world_size
        if per_rank == 0:
            raise ValueError(f"{path}: {len(self.tokens)} tokens make {n_windows} windows of context_length + 1 = "
                             f"{context_length + 1} tokens, fewer than world_size={world_size} (at least one window per "
                             "process is needed); use more data or a shorter context_length")
        self.windows = np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64)  # window indices of this rank
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.windows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration uses (as DistributedSampler.set_epoch)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch={epoch!r}: must be a non-negative integer")
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        """The window indices of this rank in the order `epoch` visits them."""
        if not self.shuffle:
            return self.windows
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        return rng.permutation(self.windows)

    def batch(self, window_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.context_length
        rows = np.stack([self.tokens[i * T : i * T + T + 1] for i in window_indices]).astype(np.int64)
        data = torch.from_numpy(rows)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch (the one set by set_epoch, then the next one on the following iteration)."""
        order = self.order(self.epoch)
        self.epoch += 1
        for b in range(len(self)):
            yield self.batch(order[b * self.batch_size : (b + 1) * self.batch_size])

    def __repr__(self) -> str:
        return (f"<TokenBatches {Path(self.info.path).name}: {len(self)} batches of {self.batch_size}x{self.context_length}, "
                f"rank {self.rank}/{self.world_size}>")


class StepBatches:
    """The batch of every optimizer step, read from a token file through `slmbook.dataloader`.

    Sequence number i = step * batch_size + row (row < batch_size, counted over all processes and
    micro-batches) is window `order(epoch)[i mod W]` of the file, epoch = i // W, where the order is
    `TokenBatches.order`, a seeded shuffle of the file's windows, and W is the number of windows
    rounded down to whole batches. Two consequences:
    - the batch of a step is a pure function of (file, seed, step): a resumed run reads exactly the
      batches an uninterrupted one would;
    - process r of N reads only its rows of each micro-batch (its own disjoint shard of the stream),
      and the rows of all processes together are the one-process batch, whatever N and grad_accum:
      data-parallel training computes the same thing as one process with the same batch_size.
    """

    def __init__(self, path: str | Path, batch_size: int, context: int, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.source = TokenBatches(path, batch_size=batch_size, context_length=context, seed=seed, device=device)
        self.info, self.batch_size = self.source.info, batch_size
        windows = len(self.source.windows)
        self.per_epoch = windows - windows % batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{path}: {windows} windows of {context + 1} tokens are fewer than "
                             f"batch_size={batch_size}; "
                             "use more data, a smaller batch_size or a shorter context")
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # kept small: an order holds one int64 per window of the file
                self._orders.pop(min(self._orders))
            self._orders[epoch] = self.source.order(epoch)
        return self._orders[epoch]

    def windows(self, start: int, count: int) -> np.ndarray:
        """Window numbers of sequences start .. start + count - 1."""
        index = np.arange(start, start + count)
        epochs, positions = index // self.per_epoch, index % self.per_epoch
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self.order(int(epoch))[positions[here]]
        return out

    def batch(self, step: int, micro: int = 0, grad_accum: int = 1, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of micro-batch `micro` of process `rank` at optimizer step `step`, on the device."""
        per = self.batch_size // (grad_accum * world_size)
        start = step * self.batch_size + (micro * world_size + rank) * per
        return self.source.batch(self.windows(start, per))

    def epochs(self, steps: int) -> float:
        """Passes over the training windows that `steps` optimizer steps make."""
        return steps * self.batch_size / self.per_epoch
