"""Attention: every token looks back at the tokens before it and takes a weighted mix (chapter 8).

Two layers of the idea live here.

`scaled_dot_product_attention` is the formula softmax(q k^T / sqrt(d) + mask) v, written out step by
step (scores, scale, causal mask, softmax, mix) when `impl="manual"`, or handed to PyTorch's fused
kernel `F.scaled_dot_product_attention` when `impl="sdpa"`. Same inputs, same answer (the tests
check it); the fused kernel never materialises the T x T weights, so it is faster and lighter, and
the manual path is the one you can read and whose weights you can draw.

`GroupedQueryAttention` is the layer: projections to queries, keys and values, Qwen3's per-head
RMSNorm on queries and keys, RoPE, attention, output projection. One class covers the three
variants by its `n_kv_heads`: n_heads (multi-head attention, MHA), 1 (multi-query, MQA) or anything
that divides n_heads (grouped-query, GQA): each key/value head is shared by n_heads / n_kv_heads
query heads, which shrinks the KV cache by that factor (chapter 9).

What a trained model does with it is measured by three functions. `previous_token_score` and
`induction_score` read a head's weights: how much each query puts on the token just before it, and
how much on the token that followed an earlier copy of itself (the two kinds of head found first in
trained transformers; Olsson et al., 2022). `loss_by_position` measures the result: the next-token
loss at each position of real stories, which falls as the context grows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slmbook.config import positive_int
from slmbook.norms import RMSNorm
from slmbook.positional import apply_rope

ATTN_IMPLS = ("sdpa", "manual")


def check_attn_impl(attn_impl: str) -> str:
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl={attn_impl!r} is unknown; allowed: {ATTN_IMPLS}")
    return attn_impl


def causal_mask(q_len: int, k_len: int, device=None) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where a query may look.

    The q_len queries are the *last* q_len of the k_len positions (with a KV cache the keys include
    everything generated so far), so query i sits at position k_len - q_len + i and may see keys
    0 .. k_len - q_len + i: a lower triangle shifted right by k_len - q_len.
    """
    if q_len > k_len:
        raise ValueError(f"q_len={q_len} > k_len={k_len}: every query must also be a key")
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    impl: str = "manual",
    return_weights: bool = False,
    mask: torch.Tensor | None = None,
):
    """softmax(q k^T / sqrt(head_dim) + causal mask) v for q (B, H, Tq, D) and k, v (B, H_kv, Tk, D).

    H must be a multiple of H_kv; each key/value head serves H / H_kv consecutive query heads (the
    layout of `transformers`' `repeat_kv`). With `return_weights=True` (manual path only) it returns
    (output, weights) with weights (B, H, Tq, Tk). `mask` (boolean, broadcastable to (Tq, Tk), True
    where a query may look) replaces the causal rule: a static KV cache's keys include empty slots.
    """
    check_attn_impl(impl)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be 4-D (batch, heads, tokens, head_dim); got {q.ndim}, {k.ndim}, {v.ndim} dims")
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads % n_kv_heads:
        raise ValueError(f"q has {n_heads} heads, k/v have {n_kv_heads}: "
                         "the key/value heads must divide the query heads")
    q_len, k_len = q.shape[2], k.shape[2]
    groups = n_heads // n_kv_heads

    if impl == "sdpa":
        if return_weights:
            raise ValueError("return_weights=True needs impl='manual': the fused kernel never forms the weights")
        if mask is None:  # the causal rule
            if not causal or q_len == 1:  # one new token may see every cached key: no mask needed
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=groups > 1)
            if q_len == k_len:  # training and prefill: the kernel's own triangle, no mask tensor
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=groups > 1)
            mask = causal_mask(q_len, k_len, device=q.device)  # several new tokens after a cache
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=groups > 1)

    # The manual path: the formula, one line per step.
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, H, Tk, D): key head j serves query heads j*g .. j*g+g-1
        v = v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk): how well each query matches each key
    scores = scores * (1.0 / math.sqrt(q.shape[-1]))  # keep the logits' spread independent of D
    if mask is not None or causal:
        allowed = mask if mask is not None else causal_mask(q_len, k_len, device=q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # each row sums to 1 over the keys
    out = weights @ v  # (B, H, Tq, D): a weighted mix of the values
    return (out, weights) if return_weights else out


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with n_heads query heads sharing n_kv_heads key/value heads (MHA/GQA/MQA).

    Parameter names follow `transformers`' Qwen3Attention (q_proj, k_proj, v_proj, o_proj, q_norm,
    k_norm), so checkpoints map name for name. `attn_impl` ("sdpa" or "manual") picks the kernel and
    can be changed on a built module; a call with `return_weights=True` uses the manual path.
    `causal` is True for a language model; chapter 9 sets it to False on a copy to show that cached
    keys and values stay valid only because no token sees the ones after it.
    """

    causal: bool = True

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int | None = None,
        qk_norm: bool = True,
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
        layer_idx: int = 0,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
            positive_int(name, value)
        if n_kv_heads > n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}: allowed n_kv_heads are "
                f"{[k for k in range(1, n_heads + 1) if n_heads % k == 0]}"
            )
        if head_dim is None:
            if dim % n_heads:
                raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}; set head_dim explicitly")
            head_dim = dim // n_heads
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim={head_dim}: RoPE rotates pairs of channels, so head_dim must be even and >= 2")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.attn_impl = check_attn_impl(attn_impl)
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False, dtype=dtype)
        # Qwen3: normalising each head's q and k keeps the attention logits from blowing up in training.
        self.q_norm = RMSNorm(head_dim, norm_eps, dtype=dtype) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, norm_eps, dtype=dtype) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache=None,
        return_weights: bool = False,
    ):
        """x (B, T, dim) at the positions whose RoPE tables are cos, sin (T, head_dim).

        With a `KVCache`, this layer's new keys and values are written into it and attention runs over
        everything stored so far. Returns (B, T, dim), or (output, weights) with return_weights=True.
        """
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        impl = "manual" if return_weights else self.attn_impl
        mask = None if kv_cache is None else kv_cache.mask  # a static cache's (None for the others)
        result = scaled_dot_product_attention(q, k, v, causal=self.causal, impl=impl,
                                              return_weights=return_weights, mask=mask)
        out, weights = result if return_weights else (result, None)
        out = self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))
        return (out, weights) if return_weights else out

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"attn_impl={self.attn_impl!r}")


# --- what trained heads do, and what attention buys ---------------------------------------------------


def _check_weights(weights) -> torch.Tensor:
    if not isinstance(weights, torch.Tensor) or weights.ndim != 4 or weights.shape[-1] != weights.shape[-2]:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights={shape}: expected one layer's attention weights (batch, heads, tokens, tokens), "
                         "as `model(ids, return_attention=True)` returns them, or a list of those (one per layer)")
    if weights.shape[-1] < 2:
        raise ValueError(f"weights cover {weights.shape[-1]} token: a score needs at least 2 tokens")
    return weights.float()


def _per_layer(weights, score):
    """score(one layer's weights) -> (heads,); a list or tuple of layers -> (layers, heads)."""
    if isinstance(weights, (list, tuple)):
        if not weights:
            raise ValueError("weights=[]: expected one (batch, heads, tokens, tokens) tensor per layer")
        return torch.stack([score(_check_weights(w)) for w in weights])
    return score(_check_weights(weights))


def previous_token_score(weights) -> torch.Tensor:
    """Each head's mean weight on the token just before the query (queries 1..T-1; query 0 has none).

    A head that always looks one token back scores 1; a causal head spreading its weight evenly scores
    the mean of 1/(t+1). `weights`: (batch, heads, T, T), or a list of them (one per layer), giving
    (heads,) or (layers, heads).
    """
    return _per_layer(weights, lambda w: w.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1)))


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, T, T): True at (t, s) where s < t and ids[s - 1] == ids[t], i.e. key s is the
    token that followed an earlier copy of query t's token (the key a copying head should look at)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2) or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids={ids!r}: expected an integer tensor of token ids, (tokens,) or (batch, tokens)")
    ids = ids[None] if ids.ndim == 1 else ids
    seq = ids.shape[1]
    same = ids[:, :, None] == ids[:, None, :]  # (B, t, j): token j equals token t
    follows = torch.zeros_like(same)
    follows[:, :, 1:] = same[:, :, :-1]  # (B, t, s): token s - 1 equals token t
    earlier = torch.ones(seq, seq, dtype=torch.bool, device=ids.device).tril(diagonal=-1)  # s < t
    return follows & earlier


def induction_score(weights, ids: torch.Tensor) -> torch.Tensor:
    """Each head's weight on the token right after an earlier occurrence of the query's token.

    For query t, the weight summed over every key s < t with ids[s - 1] == ids[t]: in "... Lily went ...
    Lily", the second "Lily" looking at "went" predicts that "went" comes next (the induction heads of
    Olsson et al., 2022). Averaged over the queries whose token occurred before. `weights`: (batch, heads,
    T, T) or a list of them (one per layer); `ids`: (batch, T) or (T,), the tokens the weights were
    computed on. Returns (heads,) or (layers, heads).
    """
    targets = induction_targets(ids)
    has_copy = targets.any(-1)  # (B, T): queries whose token occurred earlier (and was followed)
    if not has_copy.any():
        raise ValueError("ids has no token that repeats an earlier one: the induction score is undefined "
                         "(use a longer text, or a passage repeated twice)")

    def score(w):
        if w.shape[0] != targets.shape[0] or w.shape[-1] != targets.shape[-1]:
            raise ValueError(f"weights {tuple(w.shape)} and ids {tuple(targets.shape[:2])} disagree: expected "
                             f"weights (batch, heads, T, T) for ids (batch, T)")
        on_targets = (w * targets[:, None].to(w.device, w.dtype)).sum(-1)  # (B, H, T)
        mask = has_copy[:, None].to(w.device)
        return (on_targets * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2))

    return _per_layer(weights, score)


@torch.no_grad()
def loss_by_position(model, sequences, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss (nats) at every position of `sequences` (lists of token ids, e.g. stories
    from their start), and how many sequences reached each position.

    Entry p is the loss of predicting token p + 1 after seeing tokens 0..p: the context grows with p, so
    the curve shows how much a model gains from what came before. Sequences are run in batches, padded
    at the end (causal attention: padding never changes the positions before it).
    """
    sequences = [list(s) for s in sequences]
    if not sequences or any(len(s) < 2 for s in sequences):
        raise ValueError("sequences: expected a non-empty list of token-id lists of at least 2 tokens each")
    positive_int("batch_size", batch_size)
    device = next(model.parameters()).device
    longest = max(len(s) for s in sequences)
    total = torch.zeros(longest - 1, dtype=torch.float64)
    count = torch.zeros(longest - 1, dtype=torch.long)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width - 1), -100, dtype=torch.long)
        for row, s in enumerate(chunk):
            ids[row, :len(s)] = torch.tensor(s)
            targets[row, :len(s) - 1] = torch.tensor(s[1:])
        logits = model(ids[:, :-1].to(device)).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets.to(device), ignore_index=-100, reduction="none").cpu()
        valid = targets != -100
        total[:width - 1] += (nll * valid).sum(0).double()
        count[:width - 1] += valid.sum(0)
    return (total / count.clamp(min=1)).float(), count


@torch.no_grad()
def regroup_kv_heads(model, n_kv_heads: int):
    """A copy of a QwenModel with `n_kv_heads` key/value heads, made from its trained ones the way Ainslie
    et al. (2023) turn a multi-head checkpoint into GQA or MQA: fewer heads are the means of the heads
    they merge (each merged group served the same query heads), more heads are copies (the function is
    unchanged: each query head reads the same keys and values as before). Training then adapts it."""
    import copy

    config = model.config
    old = config.n_kv_heads
    positive_int("n_kv_heads", n_kv_heads)
    if config.n_heads % n_kv_heads or (old % n_kv_heads and n_kv_heads % old):
        raise ValueError(f"n_kv_heads={n_kv_heads}: must divide n_heads={config.n_heads} and divide or be a multiple "
                         f"of the model's n_kv_heads={old}")
    new_model = copy.deepcopy(model)
    new_model.config = config.replace(n_kv_heads=n_kv_heads)
    for layer in new_model.layers:
        attn = layer.self_attn
        for name in ("k_proj", "v_proj"):
            weight = getattr(attn, name).weight.view(old, attn.head_dim, -1)  # (heads, head_dim, dim)
            if n_kv_heads < old:  # merge groups of old // n_kv_heads consecutive heads
                weight = weight.view(n_kv_heads, old // n_kv_heads, attn.head_dim, -1).mean(1)
            else:  # copy each head for the query heads it served
                weight = weight.repeat_interleave(n_kv_heads // old, dim=0)
            projection = nn.Linear(weight.shape[-1], n_kv_heads * attn.head_dim, bias=False,
                                   dtype=weight.dtype, device=weight.device)
            projection.weight.copy_(weight.reshape(n_kv_heads * attn.head_dim, -1))
            setattr(attn, name, projection)
        attn.n_kv_heads = n_kv_heads
    return new_model
