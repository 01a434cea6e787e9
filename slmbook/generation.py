"""Text generation: the inference loop and the ways to pick the next token (chapter 9).

The loop: run the prompt through the model once ("prefill"), pick a token from the last position's
logits, append it, repeat ("decode"). With a KV cache each decode step feeds one token; without one
(`use_cache=False`, kept for comparison) every step runs the model over the whole sequence again.
Both paths apply the output head to the last position only, so they do the same work apart from what
the cache saves, and they pick identical tokens (the tests check).

On a GPU a decode step of a small model is a few hundred tiny kernels, and launching them from Python
takes longer than running them. `cache="static"` keeps the cache's write position on the device, so
every decode step has the same shapes and addresses; on CUDA the loop then records one step as a CUDA
graph and replays it for every token: one launch instead of hundreds (`DecodeGraph`).

Picking a token from logits z:
- greedy (`temperature=0`): argmax z.
- temperature T > 0: sample from softmax(z / T); T < 1 sharpens, T > 1 flattens.
- top-k: keep only the k largest logits before sampling.
- top-p (nucleus): keep the smallest set of most likely tokens whose probability reaches p.
Sampling draws from a `torch.Generator` seeded with `seed`, so a seeded run repeats exactly.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from slmbook.config import check_token_ids
from slmbook.kv_cache import KVCache

CACHE_KINDS = ("preallocated", "growing", "static")


def check_sampling(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   vocab_size: int | None = None) -> None:
    """Refuse sampling settings that mean nothing, naming the parameter and what is allowed."""
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature)
            or not temperature >= 0):
        raise ValueError(f"temperature={temperature!r}: must be a finite number >= 0 (0 means greedy)")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k={top_k!r}: must be None or an integer >= 1")
        if vocab_size is not None and top_k > vocab_size:
            raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab_size}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p!r}: must be None or a number in (0, 1]")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits with everything below the k-th largest (per row) set to -inf (ties at the k-th kept)."""
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Logits outside the nucleus set to -inf: the most likely tokens, in order, until their total
    probability reaches p (the token that crosses p is kept; the most likely token always is)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass of the tokens ranked above each one
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of logits (batch, vocab) -> (batch,)."""
    check_sampling(temperature, top_k, top_p, logits.shape[-1])
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _is_int(value) -> bool:
    """An integer that is not a bool (True would silently be token 1), NumPy's integers included."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _from_list(input_ids, vocab_size: int) -> torch.Tensor:
    """A prompt given as a list (or a list of rows) of ints. Each entry is checked first: building the
    tensor directly would truncate 1.7 to token 1 and read True as token 1."""
    rows = input_ids if input_ids and all(isinstance(r, (list, tuple)) for r in input_ids) else [input_ids]
    for r, row in enumerate(rows):
        for i, value in enumerate(row):
            where = f"[{r}][{i}]" if rows is input_ids else f"[{i}]"
            if not _is_int(value):
                raise TypeError(f"input_ids{where}={value!r} is a {type(value).__name__}: token ids must be integers")
            if not 0 <= value < vocab_size:
                raise ValueError(f"input_ids{where}={value} is not a token id: allowed 0 <= id < vocab_size={vocab_size}")
    if len({len(row) for row in rows}) > 1:
        raise ValueError(f"input_ids rows have different lengths {[len(row) for row in rows]}: a batch needs "
                         "prompts of equal length")
    return torch.tensor(input_ids, dtype=torch.long)


def _as_batch(input_ids, vocab_size: int) -> tuple[torch.Tensor, bool]:
    """(batch, tokens) int64 ids and whether the prompt was a single row; every id is checked to be
    in [0, vocab_size)."""
    if isinstance(input_ids, (list, tuple)):
        input_ids = _from_list(input_ids, vocab_size)
    elif isinstance(input_ids, np.ndarray):  # e.g. a slice of a token file (uint16)
        input_ids = torch.from_numpy(input_ids.astype(np.int64) if input_ids.dtype.kind in "iu" else input_ids)
    if (not isinstance(input_ids, torch.Tensor) or input_ids.dtype == torch.bool
            or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex):
        raise TypeError(f"input_ids must be a list of ints or an integer tensor; got {type(input_ids).__name__}"
                        f" {getattr(input_ids, 'dtype', '')}")
    if input_ids.ndim not in (1, 2):
        raise ValueError(f"input_ids must have shape (tokens,) or (batch, tokens); got {tuple(input_ids.shape)}")
    single = input_ids.ndim == 1
    input_ids = input_ids.long()
    check_token_ids("input_ids", input_ids, vocab_size)
    return (input_ids[None, :] if single else input_ids), single


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, stop_token: int | None = None, seed: int | None = None,
             use_cache: bool = True, cache: str = "preallocated") -> torch.Tensor:
    """Continue `input_ids` ((tokens,) or (batch, tokens)) by up to `max_new_tokens` tokens.

    Returns the prompt followed by the new tokens, with the input's shape convention. Generation
    stops early once every row has produced `stop_token` (rows that stopped repeat it). `cache` picks
    the KV-cache storage ("preallocated", "growing" or "static": on CUDA, decode steps replayed as a
    CUDA graph); `use_cache=False` recomputes everything.
    """
    config = model.config
    ids, single = _as_batch(input_ids, config.vocab_size)
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 0")
    check_sampling(temperature, top_k, top_p, config.vocab_size)
    if not isinstance(cache, str) or cache not in CACHE_KINDS:
        raise ValueError(f"cache={cache!r}: allowed {CACHE_KINDS}")
    if stop_token is not None and not (_is_int(stop_token) and 0 <= stop_token < config.vocab_size):
        raise ValueError(f"stop_token={stop_token!r}: must be None or a token id in [0, {config.vocab_size})")
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise ValueError(f"seed={seed!r}: must be None or an integer >= 0")
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache={use_cache!r}: must be True or False")
    max_new_tokens, stop_token = int(max_new_tokens), None if stop_token is None else int(stop_token)
    prompt_len = ids.shape[1]
    if prompt_len == 0:
        raise ValueError("input_ids is empty: generation needs at least one prompt token")
    if prompt_len + max_new_tokens > config.context_length:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context_length={config.context_length}"
        )
    device = next(model.parameters()).device
    if cache == "static" and config.is_moe and device.type == "cuda":
        raise ValueError("cache='static' replays decode steps as a CUDA graph, which needs the same shapes at "
                         "every step; a mixture of experts sends each expert a data-dependent number of tokens "
                         "(and reads those counts on the CPU): use cache='preallocated'")
    ids = ids.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    kv_cache = None
    if use_cache and max_new_tokens > 0:
        kv_cache = KVCache.for_model(model, ids.shape[0], static=cache == "static",
                                     max_tokens=None if cache == "growing" else prompt_len + max_new_tokens)
    on_cuda = kv_cache is not None and kv_cache.static and device.type == "cuda"
    graph = DecodeGraph(model, kv_cache) if on_cuda else None

    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new_input = ids
    with decoding_attention(device):
        for step in range(max_new_tokens):
            if graph is not None and step > 0:  # decode steps; the prompt (step 0) runs as it is
                logits = graph(new_input)
            else:
                logits = next_token_logits(model, new_input if use_cache else ids, kv_cache)
            token = sample_next_token(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                token = torch.where(finished, torch.full_like(token, stop_token), token)
                finished |= token == stop_token
            ids = torch.cat((ids, token[:, None]), dim=1)
            new_input = token[:, None]
            if stop_token is not None and bool(finished.all()):
                break
    return ids[0] if single else ids


def decoding_attention(device: torch.device):
    """The attention kernels for a decode loop. On CUDA it leaves out cuDNN's: cuDNN builds a plan for
    every new sequence length (about 9 ms of CPU each, measured on an H100 host), and in a decode
    loop the length grows by one every step, so planning would cost far more than attending."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def next_token_logits(model, input_ids: torch.Tensor, kv_cache=None) -> torch.Tensor:
    """Logits (batch, vocab) for the token after `input_ids`: the output head on the last position only."""
    hidden = model.forward_hidden(input_ids, kv_cache)
    return model.lm_head(hidden[:, -1, :])


class DecodeGraph:
    """One decode step (one token per row in, next-token logits out) recorded as a CUDA graph.

    The first call runs the step for real on a side stream (it also warms up the kernels), then
    records it: recording does not execute anything. Later calls copy the new tokens into the recorded
    input buffer and replay every kernel with one launch. This works because a static KV cache has
    the same addresses and shapes at every step and advances its write position on the device (the
    replay adds 1 to `offset`); Python's `length` is kept in step here.
    """

    def __init__(self, model, kv_cache: KVCache):
        if not kv_cache.static:
            raise ValueError("DecodeGraph needs a static KV cache (KVCache(..., static=True))")
        self.model, self.kv_cache = model, kv_cache
        self.tokens = torch.zeros(kv_cache.batch_size, 1, dtype=torch.long, device=kv_cache.device)
        self.graph = self.logits = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self._run_and_record(tokens)
        self.tokens.copy_(tokens)
        self.graph.replay()
        self.kv_cache.length += tokens.shape[1]
        return self.logits

    def _run_and_record(self, tokens: torch.Tensor) -> torch.Tensor:
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):  # a real step, and the warm-up that recording needs
            logits = next_token_logits(self.model, tokens, self.kv_cache)
        main.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        length = self.kv_cache.length
        with torch.cuda.graph(self.graph):  # recorded, not run: the cache is untouched
            self.logits = next_token_logits(self.model, self.tokens, self.kv_cache)
        self.kv_cache.length = length  # the recording ran the Python bookkeeping once; undo it
        return logits
