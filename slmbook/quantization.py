"""Quantization: store a trained model's weights in 8 or 4 bits and measure what it costs (chapter 12).

A weight matrix W is replaced by small integers q and a few floats (scales), with W ≈ dequant(q):

    absmax (symmetric):   scale = max|W| / qmax          q = round(W / scale)            W ≈ q * scale
    zero-point (affine):  scale = (max - min) / (2^b - 1) z = round(-min / scale)
                          q = clamp(round(W / scale) + z, 0, 2^b - 1)                       W ≈ (q - z) * scale

with qmax = 2^(b-1) - 1 (127 for int8, 7 for int4). Absmax wastes codes when W is lopsided;
zero-point shifts the grid onto [min, max] at the cost of one more number per group.

*Granularity* is how many weights share a scale: one per tensor, one per output channel (row), or
one per group of `group_size` consecutive weights in a row. A single outlier sets the scale of all
weights that share it; at 8 bits (255 levels) the rest still get fine steps, at 4 bits (15 levels)
they collapse onto 0 and ±1 steps. Group-wise scales keep the damage inside the outlier's group,
for a few extra bits: 32-bit scales cost 32 / group_size bits per weight (0.5 at group_size 64).

Two int4 codes are packed into one byte (`pack_int4`), so an int4 tensor really takes half the bytes.

`QuantizedLinear` keeps the codes and scales and dequantizes on the fly (weight-only quantization,
what bitsandbytes and GPTQ-style kernels do, minus the fused kernel); `quantize_model` swaps a
model's linear layers for them. `to_bitsandbytes` does the same with the library's LLM.int8
(`Linear8bitLt`, outliers kept in 16 bits) and 4-bit NF4/FP4 layers (`Linear4bit`), which run on a
CPU in bitsandbytes 0.50 (no GPU needed). `compare_methods` builds the chapter's table: bits per
weight, bytes, perplexity on held-out stories and its change, the time of a forward pass.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Chapter 12 scores its table through `qz.evaluation_batches`, `qz.evaluate_nll`, `qz.forward_seconds` and
# `qz.format_table`: names of the evaluation module (slmbook/evaluation.py), kept importable from here.
from slmbook.evaluation import (  # noqa: F401
    compare_variants,
    evaluate_nll,
    evaluation_batches,
    format_table,
    forward_seconds,
    logits_of,
)

SCHEMES = ("absmax", "zeropoint")
GRANULARITIES = ("tensor", "channel", "group")
BITS = (4, 8)


# ------------------------------------------------------------------------------------------------
# int4 packing: two 4-bit codes per byte
# ------------------------------------------------------------------------------------------------


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (signed -8..7 or unsigned 0..15) two per byte along the last dimension.

    Element 2i goes to the low nibble and 2i+1 to the high nibble of byte i (the order
    bitsandbytes and GGML use); signed codes are stored as two's-complement nibbles.
    """
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point():
        raise TypeError("codes must be an integer tensor")
    if codes.shape[-1] % 2:
        raise ValueError(f"codes last dimension {codes.shape[-1]} must be even to pack two per byte")
    codes = codes.to(torch.int16)  # (uint8 would wrap the comparison with -8)
    if codes.numel() and (codes.min() < -8 or codes.max() > 15):
        raise ValueError(f"codes range {codes.min().item()}..{codes.max().item()}: 4-bit codes must lie in "
                         "-8..7 (signed) or 0..15 (unsigned)")
    nibbles = (codes & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """Inverse of `pack_int4`: (..., n) bytes -> (..., 2n) codes (int8), signed or unsigned."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    low, high = (packed & 0xF).to(torch.int8), (packed >> 4).to(torch.int8)
    codes = torch.stack([low, high], dim=-1).flatten(-2)
    return torch.where(codes >= 8, codes - 16, codes) if signed else codes


# ------------------------------------------------------------------------------------------------
# quantize / dequantize a tensor
# ------------------------------------------------------------------------------------------------


def _check_settings(bits, scheme, granularity, group_size) -> None:
    if bits not in BITS:
        raise ValueError(f"bits={bits!r}: allowed {BITS}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r}: allowed {SCHEMES}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: allowed {GRANULARITIES}")
    if granularity == "group":
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2 or group_size % 2:
            raise ValueError(f"group_size={group_size!r}: granularity='group' needs an even integer >= 2")
    elif group_size is not None:
        raise ValueError(f"group_size={group_size!r}: only used with granularity='group' (got {granularity!r})")


def code_range(bits: int, scheme: str) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes: symmetric -(2^(b-1) - 1)..2^(b-1) - 1 for absmax (so that 0
    stays 0 and the grid is symmetric), unsigned 0..2^b - 1 for zero-point."""
    if scheme == "absmax":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _grouped(weight: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View the weight as (rows, groups, group_size): the last dimension shares one scale."""
    if granularity == "tensor":
        return weight.reshape(1, 1, -1)
    if weight.ndim != 2:
        raise ValueError(f"granularity={granularity!r} needs a 2-D weight (out_features, in_features), "
                         f"got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if granularity == "channel":
        return weight.reshape(rows, 1, cols)
    if cols % group_size:
        raise ValueError(f"group_size={group_size} does not divide the weight's {cols} input features; "
                         f"allowed: divisors of {cols}")
    return weight.reshape(rows, cols // group_size, group_size)


@dataclass
class QuantizedTensor:
    """Integer codes plus the floats that map them back: one scale (and zero point) per group."""

    codes: torch.Tensor  # int8 (8-bit absmax), uint8 (8-bit zero-point) or packed uint8 (4-bit)
    scale: torch.Tensor  # float32, (rows, groups, 1)
    zero_point: torch.Tensor | None  # uint8, (rows, groups, 1); None for absmax
    bits: int
    scheme: str
    granularity: str
    group_size: int | None
    shape: tuple[int, ...]

    def int_codes(self) -> torch.Tensor:
        """The codes as integers, shaped (rows, groups, group_size)."""
        codes = unpack_int4(self.codes, signed=self.scheme == "absmax") if self.bits == 4 else self.codes
        return codes.to(torch.int32).reshape(self.scale.shape[0], self.scale.shape[1], -1)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = self.int_codes().to(torch.float32)
        if self.zero_point is not None:
            q = q - self.zero_point.to(torch.float32)
        return (q * self.scale).reshape(self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        """Storage: codes, scales and zero points."""
        tensors = [self.codes, self.scale] + ([self.zero_point] if self.zero_point is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / math.prod(self.shape)


def quantize(weight: torch.Tensor, bits: int = 8, scheme: str = "absmax", granularity: str = "channel",
             group_size: int | None = None) -> QuantizedTensor:
    """Quantize `weight` with the formulas of the module docstring (round half to even, as torch)."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point tensor")
    _check_settings(bits, scheme, granularity, group_size)
    w = _grouped(weight.detach().to(torch.float32), granularity, group_size)
    qmin, qmax = code_range(bits, scheme)
    zero_point = None
    if scheme == "absmax":
        absmax = w.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
        q = torch.clamp(torch.round(w / scale), qmin, qmax)
    else:
        # the range always contains 0, so that 0 (padding, pruned weights) is stored exactly
        lo = w.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = w.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = torch.where(hi > lo, (hi - lo) / (qmax - qmin), torch.ones_like(hi))
        zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
        q = torch.clamp(torch.round(w / scale) + zero, qmin, qmax)
        zero_point = zero.to(torch.uint8)
    codes = q.to(torch.int8 if scheme == "absmax" else torch.uint8).reshape(-1)
    if bits == 4:
        if weight.numel() % 2:
            raise ValueError(f"weight has {weight.numel()} elements: 4-bit packing needs an even count")
        codes = pack_int4(codes)
    return QuantizedTensor(codes, scale, zero_point, bits, scheme, granularity, group_size, tuple(weight.shape))


def fake_quantize(weight: torch.Tensor, **settings) -> torch.Tensor:
    """quantize then dequantize: the weight the quantized model effectively computes with."""
    return quantize(weight, **settings).dequantize(weight.dtype)


def error_stats(original: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    """How far `approx` is from `original`: MSE, max |error|, relative error ||e|| / ||w||, the
    signal-to-quantization-noise ratio in dB (each 6 dB is one more bit's worth), and the share of
    non-zero weights that became exactly 0."""
    original, approx = original.detach().float(), approx.detach().float()
    if original.shape != approx.shape:
        raise ValueError(f"shapes differ: original {tuple(original.shape)} vs approx {tuple(approx.shape)}")
    err = approx - original
    signal, noise = original.pow(2).sum().item(), err.pow(2).sum().item()
    nonzero = original != 0
    return {
        "mse": err.pow(2).mean().item(),
        "max_abs_error": err.abs().max().item(),
        "relative_error": math.sqrt(noise / signal) if signal > 0 else math.nan,
        "sqnr_db": 10 * math.log10(signal / noise) if noise > 0 else math.inf,
        "zeroed_fraction": ((approx == 0) & nonzero).sum().item() / max(1, nonzero.sum().item()),
    }


# ------------------------------------------------------------------------------------------------
# quantized linear layers
# ------------------------------------------------------------------------------------------------


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored as a `QuantizedTensor` (buffers: codes, scale, zero_point)
    and dequantized on the fly for each forward pass; the bias, if any, stays in float."""

    def __init__(self, linear: nn.Linear, bits: int = 8, scheme: str = "absmax", granularity: str = "channel",
                 group_size: int | None = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        qt = quantize(linear.weight, bits, scheme, granularity, group_size)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.scheme, self.granularity, self.group_size = bits, scheme, granularity, group_size
        self.register_buffer("codes", qt.codes)
        self.register_buffer("scale", qt.scale)
        self.register_buffer("zero_point", qt.zero_point)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.compute_dtype = linear.weight.dtype

    def quantized_weight(self) -> QuantizedTensor:
        return QuantizedTensor(self.codes, self.scale, self.zero_point, self.bits, self.scheme, self.granularity,
                               self.group_size, (self.out_features, self.in_features))

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (what the layer multiplies by)."""
        return self.quantized_weight().dequantize(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"scheme={self.scheme}, granularity={self.granularity}{group}")


def _skipped(name: str, skip) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def _linear_layers(model: nn.Module, skip) -> list[tuple[str, nn.Linear]]:
    """Plain nn.Linear layers not named in `skip` (subclasses such as an MoE router are left alone)."""
    return [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and not _skipped(name, skip)]


def pooled_error(model: nn.Module, skip=("lm_head",), **settings) -> dict[str, float]:
    """All linear weights (except `skip`) quantized with `settings` and judged as one pool: bits per
    weight (codes + scales) and `error_stats` of the concatenated weights, so large layers count in
    proportion to their size."""
    weights = [m.weight.detach().float().cpu() for _, m in _linear_layers(model, skip)]
    quantized = [quantize(w, **settings) for w in weights]  # each weight once: its codes and its bytes
    original = torch.cat([w.flatten() for w in weights])
    approx = torch.cat([q.dequantize(w.dtype).flatten() for q, w in zip(quantized, weights, strict=True)])
    nbytes = sum(q.nbytes for q in quantized)
    return {"bits_per_weight": 8 * nbytes / original.numel(), **error_stats(original, approx)}


def _replace_linears(model: nn.Module, skip, make) -> nn.Module:
    """A copy of `model`, in eval mode, whose linear layers (except `skip`) are `make(linear)`."""
    model = copy.deepcopy(model)
    for name, linear in _linear_layers(model, skip):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, make(linear))
    return model.eval()


def quantize_model(model: nn.Module, bits: int = 8, scheme: str = "absmax", granularity: str = "channel",
                   group_size: int | None = None, skip=("lm_head",)) -> nn.Module:
    """A copy of `model` with every nn.Linear (except names in `skip`) replaced by a QuantizedLinear.

    The output head is skipped by default, as bitsandbytes and most recipes do: it is tied to the
    embedding table here, and the logits are where a rounding error hurts every token.
    """
    _check_settings(bits, scheme, granularity, group_size)
    return _replace_linears(model, skip, lambda linear: QuantizedLinear(linear, bits, scheme, granularity, group_size))


# ------------------------------------------------------------------------------------------------
# bitsandbytes
# ------------------------------------------------------------------------------------------------

BNB_METHODS = ("int8", "nf4", "fp4")


def import_bitsandbytes():
    """bitsandbytes, imported quietly. Two of its log lines are kept out of notebook outputs: on CPUs
    with AVX512-BF16 it warns at import about an optional kernels package (the layers work without
    it; a machine-specific line), and LLM.int8 warns on *every* call that it casts float32 inputs to
    float16: it always computes in float16, which `bitsandbytes_linear` documents once instead."""
    cpu_ops_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = cpu_ops_log.level
    cpu_ops_log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        cpu_ops_log.setLevel(level)
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    return bitsandbytes


def bitsandbytes_linear(linear: nn.Linear, method: str, threshold: float = 6.0, blocksize: int = 64,
                        double_quant: bool = True, cpu_bf16_kernel: bool = False) -> nn.Module:
    """The bitsandbytes layer for `linear`, quantized on its device.

    method 'int8': `Linear8bitLt`, LLM.int8() (Dettmers et al., 2022): the weight rounded to float16,
    then int8 absmax per output row; inputs are cast to float16 and quantized per row too, except
    input features with an activation above `threshold` (the outliers), multiplied in float16.
    'nf4' / 'fp4': `Linear4bit` (QLoRA, Dettmers et al., 2023): 4-bit codes, one absmax per block of
    `blocksize` weights; NF4's 16 levels are normal-distribution quantiles; `double_quant` stores
    those absmax values in 8 bits too.

    On CPUs with AVX512-BF16, bitsandbytes runs 4-bit layers in eval mode through a bfloat16 kernel
    (and repacks the weight, absmax in bfloat16), so results would depend on the processor.
    `cpu_bf16_kernel=False` keeps the portable path (dequantize, then a float32 product) on every
    CPU; True allows the kernel, which needs in_features to be a multiple of `blocksize`.
    """
    if method not in BNB_METHODS:
        raise ValueError(f"method={method!r}: allowed {BNB_METHODS}")
    bnb = import_bitsandbytes()
    device, dtype = linear.weight.device, linear.weight.dtype
    if cpu_bf16_kernel and method != "int8" and linear.in_features % blocksize:
        raise ValueError(f"linear.in_features={linear.in_features} is not a multiple of blocksize={blocksize}: "
                         "bitsandbytes' CPU bfloat16 4-bit kernel works on whole blocks of each row")
    weight = linear.weight.detach().clone()
    has_bias = linear.bias is not None
    if method == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=threshold)
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=dtype,
                                  compress_statistics=double_quant, quant_type=method)
        layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type=method,
                                         blocksize=blocksize, compress_statistics=double_quant)
        if not cpu_bf16_kernel:
            portable_bitsandbytes(layer)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach().clone().cpu(), requires_grad=False)
    return layer.to(device)  # moving the parameter to a device is what quantizes it


def portable_bitsandbytes(model: nn.Module) -> nn.Module:
    """Keep every bitsandbytes 4-bit layer of `model` (in place; ours or one transformers loaded) on
    the portable CPU path: on processors with AVX512-BF16, bitsandbytes would otherwise repack the
    weight at the first forward pass in eval mode and multiply in bfloat16, so the same model would
    give different numbers on different CPUs. No effect on GPUs or on LLM.int8 layers."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def to_bitsandbytes(model: nn.Module, method: str, skip=("lm_head",), **options) -> nn.Module:
    """A copy of `model` with its linear layers (except `skip`) replaced by bitsandbytes layers."""
    if method not in BNB_METHODS:
        raise ValueError(f"method={method!r}: allowed {BNB_METHODS}")
    return _replace_linears(model, skip, lambda linear: bitsandbytes_linear(linear, method, **options))


# ------------------------------------------------------------------------------------------------
# measuring a model: bytes and bits per weight
# ------------------------------------------------------------------------------------------------


def _stored_tensors(state: dict) -> list[torch.Tensor]:
    """The tensors of a state_dict that hold the model's numbers. Skipped: bitsandbytes' format tags
    and its code tables (`quant_map`: the same 16 NF4/FP4 levels and 256 dynamic-int8 levels for every
    layer, constants of the method, which it nevertheless saves once per layer)."""
    return [t for k, t in state.items() if isinstance(t, torch.Tensor)
            and not k.endswith(("weight_format", "quant_map")) and ".quant_state." not in k]


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of everything the model stores (its state_dict: weights, codes, scales, bitsandbytes'
    quantization state; not its format tags), a tied matrix counted once."""
    return _unique_bytes(_stored_tensors(model.state_dict()))


def _is_quantizable_linear(module) -> bool:
    return type(module) in (nn.Linear, QuantizedLinear) or type(module).__name__ in ("Linear8bitLt", "Linear4bit")


def _linear_bytes_and_weights(model: nn.Module, skip) -> tuple[int, int]:
    total_bytes, total_weights = 0, 0
    for name, module in model.named_modules():
        if not _is_quantizable_linear(module) or _skipped(name, skip):
            continue
        state = {k: v for k, v in module.state_dict().items() if not k.startswith("bias")}
        total_bytes += _unique_bytes(_stored_tensors(state))
        total_weights += module.in_features * module.out_features
    if total_weights == 0:
        raise ValueError("the model has no linear layers outside skip=" + repr(skip))
    return total_bytes, total_weights


def linear_weight_bytes(model: nn.Module, skip=("lm_head",)) -> int:
    """Bytes the linear layers (except `skip`) store for their weights: codes, scales and
    quantization state (biases excluded). The memory that quantization saves."""
    return _linear_bytes_and_weights(model, skip)[0]


def linear_weight_bits(model: nn.Module, skip=("lm_head",)) -> float:
    """Average bits per weight of the linear layers (except `skip`): `linear_weight_bytes` * 8 /
    number of weights."""
    total_bytes, total_weights = _linear_bytes_and_weights(model, skip)
    return 8 * total_bytes / total_weights


# ------------------------------------------------------------------------------------------------
# the chapter's table: one row per method
# ------------------------------------------------------------------------------------------------

# name -> how to build the quantized copy (a dict of quantize_model settings, a bitsandbytes method,
# or a dtype to cast the whole model to)
METHODS = {
    "fp32": {"dtype": torch.float32},
    "bf16": {"dtype": torch.bfloat16},
    "int8 absmax per-tensor": {"bits": 8, "scheme": "absmax", "granularity": "tensor"},
    "int8 absmax per-channel": {"bits": 8, "scheme": "absmax", "granularity": "channel"},
    "int8 zero-point per-channel": {"bits": 8, "scheme": "zeropoint", "granularity": "channel"},
    "int4 absmax per-tensor": {"bits": 4, "scheme": "absmax", "granularity": "tensor"},
    "int4 absmax per-channel": {"bits": 4, "scheme": "absmax", "granularity": "channel"},
    "int4 absmax group 32": {"bits": 4, "scheme": "absmax", "granularity": "group", "group_size": 32},
    "int4 zero-point group 32": {"bits": 4, "scheme": "zeropoint", "granularity": "group", "group_size": 32},
    "bnb LLM.int8": {"bnb": "int8"},
    "bnb nf4": {"bnb": "nf4"},
    "bnb fp4": {"bnb": "fp4"},
}


def apply_method(model: nn.Module, method: str) -> nn.Module:
    """A quantized (or cast) copy of `model` for one row of METHODS."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: allowed {list(METHODS)}")
    spec = METHODS[method]
    if "dtype" in spec:
        return copy.deepcopy(model).to(spec["dtype"]).eval()
    if "bnb" in spec:
        return to_bitsandbytes(model, spec["bnb"])
    return quantize_model(model, **spec)


def weight_sizes(model: nn.Module) -> dict:
    """The size columns of the chapter's table: bits per linear weight, bytes of the linear weights and
    of the whole model."""
    return {"bits_per_weight": linear_weight_bits(model), "weight_bytes": linear_weight_bytes(model),
            "model_bytes": model_bytes(model)}


def compare_methods(model: nn.Module, batches, methods=None, evaluate=None, repeats: int = 3) -> list[dict]:
    """The chapter's table (`slmbook.evaluation.compare_variants`) over `methods` (default: every one of
    METHODS): for each, the quantized copy's sizes (`weight_sizes`), perplexity on `batches` and its change
    against fp32, evaluation tokens per second and the median time of one forward pass."""
    return compare_variants(model, batches, list(METHODS) if methods is None else methods, apply_method,
                            sizes=weight_sizes, evaluate=evaluate, repeats=repeats)
