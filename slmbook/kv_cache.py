"""The KV cache: remember every layer's keys and values so each new token costs one step (chapter 9).

Generating token t needs attention over tokens 0..t. Without a cache the model runs again over the
whole sequence for every new token, recomputing keys and values it computed the step before: the
work per token grows with t and the total with t^2. With a cache each step feeds only the new token;
its keys and values are appended and attention reads the stored ones.

The price is memory, exactly

    2 (keys and values) x n_layers x n_kv_heads x head_dim x tokens x batch x bytes per element,

which is why grouped-query attention (fewer key/value heads) matters at inference time.

Three storage strategies, one class:
- preallocated (`max_tokens` given): one buffer per layer for all tokens up front, written in place.
  No copies while generating; attention reads the first `length` positions.
- growing (`max_tokens=None`): tensors concatenated step by step; holds only what it stores.
- static (`static=True`, with `max_tokens`): preallocated, and the write position lives on the device
  (`offset`) instead of in Python, so a decode step has the same shapes and addresses every time:
  attention reads the whole buffer through a mask (key position <= query position). That is what a
  CUDA graph needs: record one step, replay it for every token (`slmbook.generation`, cache="static").

Why stored keys and values stay valid: attention is causal. Token i's hidden state in every layer
depends only on tokens 0..i, so appending token t changes nothing at the positions before it, and
their keys and values are the same whether computed now or a step ago (`prefix_kv_change` measures
it; chapter 9 also shows what would go stale if attention could see the future).

Use: the model reads `cache.length` (tokens stored, hence the position of the next token), or for a
static cache `cache.begin(new_tokens)` (the positions, as a device tensor); every attention layer
calls `update(layer, k, v)`, and after the last layer the model calls `advance(new_tokens)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slmbook.config import positive_int
from slmbook.dtypes import bytes_per_element, torch_dtype


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, batch_size: int = 1,
                   dtype="bfloat16") -> int:
    """The formula: 2 * n_layers * n_kv_heads * head_dim * tokens * batch_size * bytes per element."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("batch_size", batch_size)):
        positive_int(name, value)
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens={tokens!r}: must be an integer >= 0")
    return 2 * n_layers * n_kv_heads * head_dim * tokens * batch_size * bytes_per_element(dtype)


def config_kv_cache_bytes(config, tokens: int, batch_size: int = 1, dtype=None) -> int:
    """`kv_cache_bytes` for a `QwenConfig` (dtype defaults to the config's)."""
    return kv_cache_bytes(config.n_layers, config.n_kv_heads, config.head_dim, tokens, batch_size,
                          config.dtype if dtype is None else dtype)


@torch.no_grad()
def prefix_kv_change(model, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Per layer, the largest absolute change of the first `prefix` tokens' keys and values between a
    pass over `ids[:, :prefix]` and a pass over all of `ids` (batch, tokens): what a cache filled with
    the short pass would get wrong about the long one. Zero (up to rounding) for causal attention."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError(f"ids={ids!r}: expected a (batch, tokens) tensor of token ids")
    if not isinstance(prefix, int) or not 1 <= prefix < ids.shape[1]:
        raise ValueError(f"prefix={prefix!r}: must be an integer in 1..{ids.shape[1] - 1} (ids has "
                         f"{ids.shape[1]} tokens)")
    short, full = KVCache.for_model(model, ids.shape[0]), KVCache.for_model(model, ids.shape[0])
    model(ids[:, :prefix], kv_cache=short)
    model(ids, kv_cache=full)
    return torch.stack([
        torch.maximum((short.keys[layer] - full.keys[layer][:, :, :prefix]).abs().max(),
                      (short.values[layer] - full.values[layer][:, :, :prefix]).abs().max())
        for layer in range(short.n_layers)
    ]).float().cpu()


def generation_benchmarks(folder: str | Path | None = None) -> dict[str, dict]:
    """The measurements of `benchmarks/kv_cache_generation.py` by device kind ('cpu', 'cuda'): tokens
    per second with and without the cache for the book's model, with the hardware named. Read from the
    source checkout's benchmarks/results/ by default; empty when there are none (a package installed
    without the repository, e.g. on Colab, has no benchmarks/ folder)."""
    from slmbook.data import benchmark_results

    results = {}
    for path in benchmark_results("kv_cache_generation_*.json", folder):
        data = json.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in ("hardware", "rows", "config", "parameters") if key not in data]
        if missing:
            raise ValueError(f"{path}: not a kv_cache_generation results file (missing {missing}); "
                             "benchmarks/kv_cache_generation.py writes them")
        results[path.stem.removeprefix("kv_cache_generation_")] = data
    return results


class KVCache:
    """Keys and values of every layer, (batch, n_kv_heads, tokens, head_dim) each."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, batch_size: int = 1,
                 max_tokens: int | None = None, dtype="float32", device=None, static: bool = False):
        for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                            ("batch_size", batch_size)):
            positive_int(name, value)
        if max_tokens is not None:
            positive_int("max_tokens", max_tokens)
        if static not in (True, False):
            raise ValueError(f"static={static!r}: allowed True or False")
        if static and max_tokens is None:
            raise ValueError("static=True needs max_tokens: a static cache is preallocated")
        self.static = static
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.dtype = torch_dtype(dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.length = 0
        self.positions = self.mask = None  # a static cache's: of the tokens being added (set by begin())
        if max_tokens is None:
            self.keys: list[torch.Tensor | None] = [None] * n_layers
            self.values: list[torch.Tensor | None] = [None] * n_layers
        else:
            shape = (batch_size, n_kv_heads, max_tokens, head_dim)
            self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n_layers)]
            self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n_layers)]
        if static:
            self.offset = torch.zeros(1, dtype=torch.long, device=self.device)  # tokens stored, on the device
            self._slots = torch.arange(max_tokens, device=self.device)

    @classmethod
    def for_model(cls, model, batch_size: int = 1, max_tokens: int | None = None, dtype=None,
                  static: bool = False) -> "KVCache":
        """A cache shaped for `model` (a QwenModel), on its device, in its parameters' dtype."""
        config = model.config
        param = next(model.parameters())
        return cls(config.n_layers, config.n_kv_heads, config.head_dim, batch_size, max_tokens,
                   dtype=param.dtype if dtype is None else dtype, device=param.device, static=static)

    @property
    def preallocated(self) -> bool:
        return self.max_tokens is not None

    def begin(self, new_tokens: int) -> torch.Tensor:
        """Static cache: the positions of the next `new_tokens` tokens (a device tensor, read from
        `offset` without a sync) and the attention mask (new_tokens, max_tokens) that lets each of
        them see the stored keys and the new ones up to itself."""
        if not self.static:
            raise ValueError("begin() is for a static cache (static=True); others use cache.length")
        if self.length + new_tokens > self.max_tokens:
            raise ValueError(f"KV cache is full: {self.length} stored + {new_tokens} new > max_tokens={self.max_tokens}")
        self.positions = self.offset + self._slots[:new_tokens]
        self.mask = self._slots[None, :] <= self.positions[:, None]
        return self.positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer's new k, v (batch, n_kv_heads, new, head_dim) after the `length` stored ones;
        return all of this layer's keys and values so far (a static cache: its whole buffers, to be
        read through `mask`)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer={layer}: this cache has layers 0..{self.n_layers - 1}")
        expected = (self.batch_size, self.n_kv_heads, k.shape[2], self.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"k, v have shapes {tuple(k.shape)}, {tuple(v.shape)}; this cache expects {expected} "
                             "(batch, n_kv_heads, new tokens, head_dim)")
        if self.static:
            if self.positions is None or self.positions.shape[0] != k.shape[2]:
                raise RuntimeError("call begin(new_tokens) before update() on a static cache")
            self.keys[layer].index_copy_(2, self.positions, k.to(self.dtype))
            self.values[layer].index_copy_(2, self.positions, v.to(self.dtype))
            return self.keys[layer], self.values[layer]
        start, end = self.length, self.length + k.shape[2]
        if self.max_tokens is not None:
            if end > self.max_tokens:
                raise ValueError(f"KV cache is full: {self.length} stored + {k.shape[2]} new "
                                 f"> max_tokens={self.max_tokens}")
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        stored = 0 if self.keys[layer] is None else self.keys[layer].shape[2]
        if stored != start:
            raise RuntimeError(f"layer {layer} holds {stored} tokens but the cache length is {start}: "
                               "call advance() once after every layer has been updated")
        k, v = k.to(self.dtype), v.to(self.dtype)
        self.keys[layer] = k if start == 0 else torch.cat((self.keys[layer], k), dim=2)
        self.values[layer] = v if start == 0 else torch.cat((self.values[layer], v), dim=2)
        return self.keys[layer], self.values[layer]

    def advance(self, new_tokens: int) -> None:
        """Commit `new_tokens` positions once every layer has stored them."""
        self.length += new_tokens
        if self.static:
            self.offset += new_tokens  # on the device: a recorded CUDA graph replays this too

    def reset(self) -> None:
        """Forget everything (a preallocated cache keeps its buffers)."""
        self.length = 0
        if self.static:
            self.offset.zero_()
            self.positions = self.mask = None
        if self.max_tokens is None:
            self.keys = [None] * self.n_layers
            self.values = [None] * self.n_layers

    def nbytes(self) -> int:
        """Bytes held by the stored tokens, measured from the tensors themselves."""
        total = 0
        for tensors in (self.keys, self.values):
            for t in tensors:
                if t is not None:
                    total += t[:, :, : self.length].numel() * t.element_size()
        return total

    def allocated_nbytes(self) -> int:
        """Bytes of memory the cache holds, stored or not (a preallocated cache holds max_tokens)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)

    def __repr__(self) -> str:
        kind = f"preallocated max_tokens={self.max_tokens}" if self.preallocated else "growing"
        kind = f"static {kind}" if self.static else kind
        return (f"KVCache(layers={self.n_layers}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"batch={self.batch_size}, length={self.length}, {kind}, dtype={self.dtype})")
