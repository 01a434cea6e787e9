"""What fills a GPU's memory when a Qwen-style model trains or generates (chapter 3).

Training keeps, for every parameter, the weight, its gradient and the optimizer's state (AdamW: two
running averages), and for every token the *activations*: tensors the forward pass saves because
the backward pass needs them. Inference keeps the weights and the KV cache.

`training_memory` adds these up from a `QwenConfig` alone, before any tensor exists. The activation
count is not a rule of thumb: it walks the forward pass of `slmbook.qwen.QwenModel` op by op and
counts what each op saves for backward (the tests compare it, byte for byte, with the tensors the
real model saves on the CPU, in float32, in bfloat16, and in float32 with bfloat16 autocast, and
compare the estimated peak of a whole step with PyTorch's MemTracker, to within 1%; on a GPU
benchmarks/gpu_measurements.py compares it with `torch.cuda.max_memory_allocated`).

Assumptions, each a switch or a documented fact:
- Mixed precision = float32 parameters, gradients and optimizer states, matrix products in
  `compute_dtype` under `torch.autocast`. Autocast casts each weight to bfloat16 once per step and
  keeps the copy for backward ("autocast weight copies"); it casts a linear layer's input again for
  every layer that reads it (q, k and v each get their own copy).
- Attention runs in a fused kernel (`attention="sdpa"`: FlashAttention on a GPU) that saves q, k,
  v, the output and one log-sum-exp per query and head, never the T x T matrix; `attention="manual"`
  counts the explicit softmax path, which does save it.
- The loss is computed in float32 (the model calls `logits.float()`), so the log-softmax saved for
  backward is 4 bytes per token and vocabulary entry, and the start of backward holds two more such
  tensors (the gradient coming out of the loss and the one going into the log-softmax). This is the
  largest single item for a small model with a 50k vocabulary. The logits themselves are freed after
  the forward pass unless the training loop keeps a reference (`keep_logits=True`).
- Gradients do not exist while activations peak: `optimizer.zero_grad()` (set_to_none, PyTorch's
  default) frees them, and backward creates them as it frees the activations. So the peak is the
  largest of a few moments: the start of backward (weights + optimizer states + weight copies +
  activations + loss tensors) and the optimizer step (weights + gradients + optimizer states + one
  parameter-sized temporary that PyTorch's multi-tensor Adam allocates). With a tied embedding a
  third moment can win for small batches: the end of backward, when the head's and the lookup's
  gradients of the shared matrix and their sum all exist (weights + optimizer states + gradients +
  two more vocab x dim matrices).
- Not counted: the CUDA context (a few hundred MiB, outside `torch.cuda.max_memory_allocated`),
  cuBLAS workspaces (tens of MiB, inside it), kernel scratch space, and the allocator's rounding and
  fragmentation (`torch.cuda.memory_reserved` minus allocated). The RoPE tables are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slmbook.config import QwenConfig, positive_int
from slmbook.kv_cache import config_kv_cache_bytes
from slmbook.optimizers import STATE_TENSORS

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("sdpa", "manual")
GiB = 2**30


def _dtype_bytes(name: str, value, allowed=FLOAT_DTYPES) -> float:
    value = str(value).removeprefix("torch.")
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown; allowed: {list(allowed)}")
    return BYTES[value]


def _check_config(config) -> QwenConfig:
    if not isinstance(config, QwenConfig):
        raise TypeError(f"config={config!r}: expected a slmbook.config.QwenConfig")
    return config


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; powers of 1024, as `nvidia-smi` and PyTorch report memory."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


def parameter_counts(config: QwenConfig) -> dict[str, int]:
    """Trainable parameters by part; a tied output head shares the embedding and adds nothing. For a
    mixture of experts (chapter 13) the feed-forward holds every expert and the router: all of them
    sit in memory, even though each token uses only a few (`slmbook.moe.parameter_counts`)."""
    c = _check_config(config)
    q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    if c.is_moe:
        experts = (c.n_experts + c.n_shared_experts) * 3 * c.dim * c.expert_hidden_dim
        feed_forward = c.n_layers * (experts + c.n_experts * c.dim)  # + the router's (n_experts, dim) matrix
    else:
        feed_forward = c.n_layers * 3 * c.dim * c.hidden_dim
    return {
        "embedding": c.vocab_size * c.dim,
        "attention": c.n_layers * (2 * c.dim * q_width + 2 * c.dim * kv_width),
        "feed-forward": feed_forward,
        "norms": c.n_layers * (2 * c.dim + (2 * c.head_dim if c.qk_norm else 0)) + c.dim,
        "output head": 0 if c.tie_embeddings else c.vocab_size * c.dim,
    }


def counted_parameters(model) -> dict[str, int]:
    """The parameters of a built QwenModel, counted tensor by tensor into the parts of
    `parameter_counts` (a tied matrix is listed once, as embed_tokens): the formula's check."""
    counts = dict.fromkeys(["embedding", "attention", "feed-forward", "norms", "output head"], 0)
    for name, p in model.named_parameters():
        if name.startswith("embed_tokens"):
            part = "embedding"
        elif "norm" in name:
            part = "norms"
        elif ".self_attn." in name:
            part = "attention"
        elif ".mlp." in name:
            part = "feed-forward"
        else:
            part = "output head"
        counts[part] += p.numel()
    return counts


def parameter_count(config: QwenConfig) -> int:
    return sum(parameter_counts(config).values())


def rope_table_bytes(config: QwenConfig) -> int:
    """QwenModel's RoPE cos and sin tables: float32, context_length x head_dim each."""
    return 2 * 4 * config.context_length * config.head_dim


def matmul_parameter_count(config: QwenConfig) -> int:
    """Weights that enter a matrix product (autocast copies these): every projection and the head,
    which reads the embedding matrix again when tied. Norm weights and the lookup are not products."""
    counts = parameter_counts(config)
    return counts["attention"] + counts["feed-forward"] + config.vocab_size * config.dim


# ------------------------------------------------------------------------------------------------
# Activations: what the forward pass of QwenModel saves for backward
# ------------------------------------------------------------------------------------------------


def activation_bytes_per_token(config: QwenConfig, seq_len: int, param_dtype="float32",
                               compute_dtype="bfloat16", attention: str = "sdpa") -> dict[str, float]:
    """Bytes saved for backward per token, by op, for one decoder layer and for the model's ends.

    p = bytes of the parameter (and residual stream) dtype, c = bytes of the compute dtype; autocast
    is on when they differ. Keys ending in '(per layer)' are multiplied by n_layers in the total.
    """
    cfg = _check_config(config)
    positive_int("seq_len", seq_len)
    if seq_len > cfg.context_length:
        raise ValueError(f"seq_len={seq_len} is longer than config.context_length={cfg.context_length}")
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r} is unknown; allowed: {list(ATTENTION)}")
    p, c = _dtype_bytes("param_dtype", param_dtype), _dtype_bytes("compute_dtype", compute_dtype)
    autocast = p != c
    d, h = cfg.dim, cfg.hidden_dim
    qd, kvd = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    H, Hkv, T = cfg.n_heads, cfg.n_kv_heads, seq_len

    # RMSNorm of an input with `in_bytes` per element: the float32 input (4 per channel, a copy
    # unless it already is float32), 1/rms (4 per row), the normalised input cast back to the
    # input's dtype (in_bytes per channel) for the product with the weight.
    def rmsnorm(width, rows, in_bytes):
        return 4 * width + in_bytes * width + 4 * rows

    # Input of the linear layers that read a norm's output: one copy per layer under autocast,
    # the same tensor (saved once) without it.
    def linear_inputs(n_readers):
        return n_readers * c * d if autocast else p * d

    parts = {
        "input norm (per layer)": rmsnorm(d, 1, p),
        "q, k, v inputs (per layer)": linear_inputs(3),
        # q_norm/k_norm read the projections' outputs (compute dtype)
        "q/k norms (per layer)": rmsnorm(qd, H, c) + rmsnorm(kvd, Hkv, c) if cfg.qk_norm else 0,
    }
    if attention == "sdpa":
        # fused kernel: q, k, v, output (the o_proj input is a view of it), log-sum-exp per head
        parts["attention (per layer)"] = c * (2 * qd + 2 * kvd) + 4 * H
    else:
        # q and the repeated k for q @ k^T, the float32 softmax (and its copy in c when c != 4),
        # the repeated v, and the output made contiguous for o_proj
        weights = 4 * H * T + (c * H * T if c != 4 else 0)
        parts["attention (per layer)"] = c * qd * 4 + weights
    parts.update({
        "post-attention norm (per layer)": rmsnorm(d, 1, p),
        "feed-forward (per layer)": linear_inputs(2) + 4 * c * h,  # gate, up, silu(gate), product
        "final norm + head input": rmsnorm(d, 1, p) + (c * d if autocast else p * d),
        "log-softmax (float32)": 4 * cfg.vocab_size,
        "token ids": 16,  # int64 inputs (embedding backward) and targets (loss backward)
    })
    return parts


def _per_layer_constants(config: QwenConfig, seq_len: int, param_dtype, compute_dtype, attention) -> int:
    """Saved tensors whose size does not grow with the batch, per layer: RoPE's cos and sin cast
    to q's dtype when that is not float32 (4 tables of T x head_dim), and the boolean causal mask
    of the manual attention path (T x T)."""
    p, c = BYTES[str(param_dtype).removeprefix("torch.")], BYTES[str(compute_dtype).removeprefix("torch.")]
    rope_bytes = max(p, c) if config.qk_norm else c  # q_norm's weight (p) times normalised q (c)
    rope = 4 * seq_len * config.head_dim * rope_bytes if rope_bytes != 4 else 0
    mask = seq_len * seq_len if attention == "manual" else 0
    return rope + mask


def activation_bytes(config: QwenConfig, batch: int, seq_len: int, param_dtype="float32",
                     compute_dtype="bfloat16", attention: str = "sdpa") -> int:
    """Total bytes the forward pass saves for backward (every layer, the head and the loss)."""
    positive_int("batch", batch)
    parts = activation_bytes_per_token(config, seq_len, param_dtype, compute_dtype, attention)
    per_token = sum(v * (config.n_layers if k.endswith("(per layer)") else 1) for k, v in parts.items())
    constants = config.n_layers * _per_layer_constants(config, seq_len, param_dtype, compute_dtype, attention)
    loss_total_weight = 4  # nll_loss saves the sum of the target weights, a float32 scalar
    return round(per_token * batch * seq_len) + constants + loss_total_weight


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of each kind of tensor in one training step, and what exists at each moment.

    `components`: every kind of tensor the step ever holds. `phases`: for each moment when memory can
    peak, the components (in bytes) that exist then. `peak`: the fullest of those moments.
    """

    components: dict[str, int]
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def phase_totals(self) -> dict[str, int]:
        return {name: sum(parts.values()) for name, parts in self.phases.items()}

    @property
    def peak(self) -> int:
        return max(self.phase_totals.values())

    @property
    def peak_phase(self) -> str:
        totals = self.phase_totals
        return max(totals, key=totals.get)

    @property
    def total(self) -> int:
        """Everything at once: an upper bound, since gradients and activations never all coexist."""
        return sum(self.components.values())

    def table(self) -> str:
        rows = [f"{k:<24} {format_bytes(v):>12}" for k, v in self.components.items()]
        rows += [f"{'at ' + k:<24} {format_bytes(v):>12}" for k, v in self.phase_totals.items()]
        return "\n".join(rows)


def training_memory(config: QwenConfig, batch: int, seq_len: int, param_dtype="float32",
                    compute_dtype="bfloat16", optimizer: str = "adamw", attention: str = "sdpa",
                    keep_logits: bool = False, fused_optimizer: bool = False) -> TrainingMemory:
    """Estimate the memory of one training step of `slmbook.qwen.QwenModel` (forward, backward,
    optimizer step) with `batch` sequences of `seq_len` tokens.

    param_dtype: dtype of weights, gradients and optimizer states ("float32" for mixed precision);
    compute_dtype: autocast dtype of the matrix products (equal to param_dtype: no autocast);
    optimizer: "sgd", "momentum", "adam" or "adamw" (their state sizes: `optimizers.STATE_TENSORS`);
    keep_logits: the training loop holds the logits through backward (`_, loss = model(x, y)`);
    fused_optimizer: Adam's fused kernel (`fused=True`) updates in place with no parameter-sized
    temporary; PyTorch's default on a GPU (foreach) needs one.
    """
    cfg = _check_config(config)
    if optimizer not in STATE_TENSORS:
        raise ValueError(f"optimizer={optimizer!r} is unknown; allowed: {sorted(STATE_TENSORS)}")
    p, c = _dtype_bytes("param_dtype", param_dtype), _dtype_bytes("compute_dtype", compute_dtype)
    n_params = parameter_count(cfg)
    tokens = positive_int("batch", batch) * positive_int("seq_len", seq_len)
    saved = activation_bytes(cfg, batch, seq_len, param_dtype, compute_dtype, attention)
    log_softmax = 4 * cfg.vocab_size * tokens
    # at the start of backward: the loss's gradient w.r.t. the log-softmax and w.r.t. the logits,
    # both float32, next to the saved log-softmax (+ the logits in compute dtype if still held)
    loss_gradients = 2 * 4 * cfg.vocab_size * tokens + (c * cfg.vocab_size * tokens if keep_logits else 0)
    components = {
        "weights": n_params * p,
        "buffers": rope_table_bytes(cfg),
        "optimizer states": STATE_TENSORS[optimizer] * n_params * p,
        "gradients": n_params * p,
        "autocast weight copies": matmul_parameter_count(cfg) * c if p != c else 0,
        "activations": saved - log_softmax,
        "logits & loss": log_softmax + loss_gradients,
        # foreach Adam: sqrt(v) + eps for every parameter at once
        "optimizer temporaries": n_params * p if optimizer in ("adam", "adamw") and not fused_optimizer else 0,
        # A tied embedding gets two gradients, one from the head and one from the lookup, added out
        # of place at the very end of backward: two more vocab x dim tensors exist at that moment.
        "tied-embedding gradients": 2 * cfg.vocab_size * cfg.dim * p if cfg.tie_embeddings else 0,
    }

    def having(*names):
        return {name: components[name] for name in ("weights", "buffers", "optimizer states") + names}

    phases = {
        "start of backward": having("autocast weight copies", "activations", "logits & loss"),
        "end of backward": having("gradients", "tied-embedding gradients"),
        "optimizer step": having("gradients", "optimizer temporaries"),
    }
    return TrainingMemory(components, phases)


def max_batch_size(config: QwenConfig, seq_len: int, memory_bytes: float, **kwargs) -> int:
    """The largest batch whose estimated training peak fits in `memory_bytes` (0 if none does)."""
    if not memory_bytes > 0:
        raise ValueError(f"memory_bytes={memory_bytes!r}: must be > 0")
    if training_memory(config, 1, seq_len, **kwargs).peak > memory_bytes:
        return 0
    low, high = 1, 2
    while training_memory(config, high, seq_len, **kwargs).peak <= memory_bytes:
        low, high = high, high * 2
    while high - low > 1:  # peak grows with the batch: bisect
        mid = (low + high) // 2
        low, high = (mid, high) if training_memory(config, mid, seq_len, **kwargs).peak <= memory_bytes else (low, mid)
    return low


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceMemory:
    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())


def inference_memory(config: QwenConfig, batch: int, context: int, weight_dtype=None,
                     kv_dtype=None, prompt_logits: bool = False) -> InferenceMemory:
    """Weights + KV cache for `batch` sequences of `context` tokens (+ the logits).

    weight_dtype and kv_dtype default to `config.dtype`; weight_dtype may also be a quantized width
    ("int8", "int4": chapter 12; their scales are not counted).
    Logits: one position per sequence (generation), or every prompt position when the prefill
    returns them all (`prompt_logits=True`, as `QwenModel.forward` does), in float32.
    """
    cfg = _check_config(config)
    weight_dtype = cfg.dtype if weight_dtype is None else weight_dtype
    kv_dtype = cfg.dtype if kv_dtype is None else kv_dtype
    positive_int("batch", batch)
    positive_int("context", context)
    if context > cfg.context_length:
        raise ValueError(f"context={context} is longer than config.context_length={cfg.context_length}")
    w = _dtype_bytes("weight_dtype", weight_dtype, allowed=tuple(BYTES))
    _dtype_bytes("kv_dtype", kv_dtype)
    return InferenceMemory({
        "weights": round(parameter_count(cfg) * w),
        "KV cache": config_kv_cache_bytes(cfg, context, batch, str(kv_dtype).removeprefix("torch.")),
        "logits": 4 * cfg.vocab_size * batch * (context if prompt_logits else 1),
    })


# ------------------------------------------------------------------------------------------------
# Measuring what autograd keeps, on any device
# ------------------------------------------------------------------------------------------------


_VIEW_NODES = ("TBackward", "TransposeBackward", "ViewBackward", "PermuteBackward", "ExpandBackward",
               "UnsafeViewBackward", "AsStridedBackward")


def _is_weight_copy(t) -> bool:
    """A tensor made by casting a parameter (autocast's weight copies), possibly seen through a
    view such as the transpose a linear layer takes: its history is a copy of a leaf, nothing more."""
    fn = getattr(t, "grad_fn", None)
    while fn is not None and type(fn).__name__.startswith(_VIEW_NODES) and len(fn.next_functions) == 1:
        fn = fn.next_functions[0][0]
    if fn is None or not type(fn).__name__.startswith("ToCopyBackward"):
        return False
    return all(type(nxt).__name__ == "AccumulateGrad" for nxt, _ in fn.next_functions if nxt is not None)


def measure_saved_tensors(model, input_ids, targets, autocast_dtype=None) -> dict[str, int]:
    """Run `model(input_ids, targets)` and count the bytes autograd saves for backward.

    Every saved tensor is seen through `torch.autograd.graph.saved_tensors_hooks`; storages are
    counted once however many ops save them; parameters and buffers are left out (they exist
    anyway). Returns {"activations": ..., "autocast weight copies": ...} in bytes.
    """
    import torch

    static = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages: dict[int, tuple[int, str]] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in static:
            kind = "autocast weight copies" if _is_weight_copy(t) else "activations"
            storages[storage.data_ptr()] = (storage.nbytes(), kind)
        # A view without history, not `t` itself: a saved output would hold its own grad_fn, a cycle
        # through the C++ graph that Python's collector cannot break, and every saved tensor would
        # outlive the measurement (on a GPU, 4 GiB at the book's 16 x 512: chapter 3's measured peak
        # after this call came out 34% above the estimate). The view keeps the storage alive, so no
        # data_ptr is reused and counted twice while the forward runs.
        return t.detach()

    device_type = input_ids.device.type
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = model(input_ids, targets)
    totals = {"activations": 0, "autocast weight copies": 0}
    for nbytes, kind in storages.values():
        totals[kind] += nbytes
    del out
    return totals


def train_step(model, input_ids, targets, optimizer, autocast_dtype=None, keep_logits: bool = False) -> float:
    """One training step: forward (under autocast if asked), backward, optimizer step, gradients
    freed. The logits are dropped as soon as the loss exists, unless `keep_logits` (then they live
    through backward, as with `logits, loss = model(x, y)`)."""
    import torch

    with torch.autocast(input_ids.device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        out = model(input_ids, targets)
    loss = out[1]
    if not keep_logits:
        del out
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def measure_training_peak(model, input_ids, targets, optimizer, autocast_dtype=None,
                          keep_logits: bool = False) -> int:
    """Peak bytes allocated during one training step, after a warm-up step (so the optimizer's
    states exist, as in every step but the first).

    On a CUDA device: `torch.cuda.max_memory_allocated`. Elsewhere: PyTorch's `MemTracker`
    (torch.distributed._tools), which follows every tensor's storage as it is created and freed.
    """
    import torch

    device = input_ids.device

    def step():
        train_step(model, input_ids, targets, optimizer, autocast_dtype, keep_logits)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as error:  # torch builds without torch.distributed
        raise RuntimeError(f"measuring memory on device={device.type!r} needs torch.distributed "
                           f"(MemTracker), which this torch build lacks: {error}") from error
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[device]["Total"]
