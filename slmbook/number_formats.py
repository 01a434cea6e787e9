"""Number formats from their bits: how fp32, fp16, bf16, fp8, fp4, int8 and int4 store a number (chapter 12).

A floating-point number is three bit fields: a sign s, an exponent field E (e bits) and a mantissa
(fraction) field m (M bits). With bias = 2^(e-1) - 1:

    normal     (0 < E < max):  value = (-1)^s * 2^(E - bias) * (1 + m / 2^M)
    subnormal  (E == 0):       value = (-1)^s * 2^(1 - bias) * (m / 2^M)      (the gradual way to 0)

The exponent bits buy *range* (how large and how small), the mantissa bits buy *precision* (the gap
between neighbours, 2^-M relative). fp16 and bf16 both have 16 bits but split them differently:
fp16 (5, 10) is precise but overflows above 65,504; bf16 (8, 7) has fp32's range and 3 significant
digits, which is why training uses bf16.

What the all-ones exponent means differs: IEEE formats (fp32, fp16, bf16, fp8 e5m2) spend it on
infinities and NaNs; fp8 e4m3 ("fn": finite) keeps it for numbers and has one NaN pattern per sign,
which lifts its maximum from 240 to 448; the "fnuz" variants have no -0 (that pattern is the NaN) and
a bias one larger; fp4 e2m1 (the OCP microscaling format) has no special values at all.

Everything here reads the real bits that `torch` stores (`tensor.view(integer dtype)`), and the tests
check `decode` against torch's own conversion and `format_range` against `torch.finfo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SPECIALS = ("ieee", "fn", "fnuz", "none")


@dataclass(frozen=True)
class FloatFormat:
    """The bit layout of a binary floating-point format (1 sign bit + exponent_bits + mantissa_bits)."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    specials: str = "ieee"  # see the module docstring; one of SPECIALS
    torch_dtype: torch.dtype | None = None  # the torch dtype that stores it, if torch has one

    def __post_init__(self):
        if self.specials not in SPECIALS:
            raise ValueError(f"specials={self.specials!r}: allowed {SPECIALS}")
        if self.exponent_bits < 1 or self.mantissa_bits < 0:
            raise ValueError(f"exponent_bits={self.exponent_bits}, mantissa_bits={self.mantissa_bits}: "
                             "need at least one exponent bit and a non-negative mantissa width")

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - (0 if self.specials == "fnuz" else 1)


@dataclass(frozen=True)
class IntFormat:
    """A two's-complement (signed) or plain binary (unsigned) integer of `bits` bits."""

    name: str
    bits: int
    signed: bool = True

    @property
    def min(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1


FP32 = FloatFormat("fp32", 8, 23, "ieee", torch.float32)
FP16 = FloatFormat("fp16", 5, 10, "ieee", torch.float16)
BF16 = FloatFormat("bf16", 8, 7, "ieee", torch.bfloat16)
FP8_E4M3 = FloatFormat("fp8 e4m3", 4, 3, "fn", torch.float8_e4m3fn)
FP8_E5M2 = FloatFormat("fp8 e5m2", 5, 2, "ieee", torch.float8_e5m2)
FP8_E4M3_FNUZ = FloatFormat("fp8 e4m3 fnuz", 4, 3, "fnuz", getattr(torch, "float8_e4m3fnuz", None))
FP8_E5M2_FNUZ = FloatFormat("fp8 e5m2 fnuz", 5, 2, "fnuz", getattr(torch, "float8_e5m2fnuz", None))
FP4_E2M1 = FloatFormat("fp4 e2m1", 2, 1, "none", None)  # OCP MX fp4: torch stores it only packed
INT8 = IntFormat("int8", 8)
INT4 = IntFormat("int4", 4)
UINT8 = IntFormat("uint8", 8, signed=False)
UINT4 = IntFormat("uint4", 4, signed=False)

FLOAT_FORMATS = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2, FP8_E4M3_FNUZ, FP8_E5M2_FNUZ, FP4_E2M1)}
INT_FORMATS = {f.name: f for f in (INT8, INT4, UINT8, UINT4)}
_VIEW_DTYPES = {32: torch.int32, 16: torch.int16, 8: torch.uint8}


def float_format(value) -> FloatFormat:
    """A FloatFormat from itself, its name ('bf16', 'fp8 e4m3', ...) or a torch dtype."""
    if isinstance(value, FloatFormat):
        return value
    for fmt in FLOAT_FORMATS.values():
        if value == fmt.name or (isinstance(value, torch.dtype) and value == fmt.torch_dtype):
            return fmt
    raise ValueError(f"format={value!r} is not a known float format; allowed: {sorted(FLOAT_FORMATS)} "
                     "or their torch dtypes")


@dataclass(frozen=True)
class Decoded:
    """One bit pattern taken apart: the fields, what they mean, and the value."""

    bits: int  # the whole pattern as an unsigned integer
    sign: int
    exponent_field: int  # E as stored (biased)
    mantissa_field: int  # m as stored
    kind: str  # "normal", "subnormal", "zero", "inf" or "nan"
    exponent: int | None  # the power of two actually applied (E - bias, or 1 - bias when subnormal)
    significand: float | None  # 1.m for normals, 0.m for subnormals
    value: float


def decode(bits: int, fmt) -> Decoded:
    """Take the bit pattern `bits` (an unsigned integer) of format `fmt` apart into sign, exponent
    and mantissa, and compute its value from the formula in the module docstring."""
    fmt = float_format(fmt)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits < 2 ** fmt.bits:
        raise ValueError(f"bits={bits!r}: must be an integer in 0..{2 ** fmt.bits - 1} for {fmt.name}")
    M, e = fmt.mantissa_bits, fmt.exponent_bits
    sign = bits >> (fmt.bits - 1)
    E = (bits >> M) & (2 ** e - 1)
    m = bits & (2 ** M - 1)
    all_ones = E == 2 ** e - 1
    kind = None
    if fmt.specials == "ieee" and all_ones:
        kind = "inf" if m == 0 else "nan"
    elif fmt.specials == "fn" and all_ones and m == 2 ** M - 1:
        kind = "nan"
    elif fmt.specials == "fnuz" and sign == 1 and E == 0 and m == 0:
        kind = "nan"
    if kind is not None:
        value = math.nan if kind == "nan" else (-math.inf if sign else math.inf)
        return Decoded(bits, sign, E, m, kind, None, None, value)
    if E == 0:
        exponent, significand = 1 - fmt.bias, m / 2 ** M
        kind = "zero" if m == 0 else "subnormal"
    else:
        exponent, significand = E - fmt.bias, 1 + m / 2 ** M
        kind = "normal"
    value = (-1) ** sign * math.ldexp(significand, exponent)
    return Decoded(bits, sign, E, m, kind, exponent, significand, value)


def bits_of(x: float, fmt) -> int:
    """The bit pattern torch stores for `x` in `fmt` (rounded to nearest as torch casts do)."""
    fmt = float_format(fmt)
    if fmt.torch_dtype is None:
        raise ValueError(f"format={fmt.name!r} has no torch dtype to cast to; decode its patterns instead "
                         "(all_values)")
    stored = torch.tensor([float(x)], dtype=torch.float64).to(fmt.torch_dtype)
    pattern = int(stored.view(_VIEW_DTYPES[fmt.bits]).item())
    return pattern & (2 ** fmt.bits - 1)  # int16/int32 views are signed: keep the raw bits


def bit_fields(x: float, fmt) -> tuple[str, str, str]:
    """(sign, exponent, mantissa) of `x` stored in `fmt`, as strings of 0s and 1s."""
    fmt = float_format(fmt)
    text = format(bits_of(x, fmt), f"0{fmt.bits}b")
    return text[0], text[1:1 + fmt.exponent_bits], text[1 + fmt.exponent_bits:]


def stored_value(x: float, fmt) -> float:
    """What `x` becomes once stored in `fmt` (torch's cast, read back through `decode`)."""
    return decode(bits_of(x, fmt), fmt).value


@dataclass(frozen=True)
class FormatRange:
    bits: int
    max: float  # largest finite value
    smallest_normal: float  # 2^(1 - bias)
    smallest_subnormal: float  # 2^(1 - bias - M)
    eps: float  # gap between 1 and the next number: 2^-M (relative precision)
    decimal_digits: float  # about log10(2^(M+1)) significant decimal digits


def format_range(fmt) -> FormatRange:
    """Range and precision of a float format, derived from its bit layout alone."""
    fmt = float_format(fmt)
    M, e = fmt.mantissa_bits, fmt.exponent_bits
    top_field = 2 ** e - 1
    if fmt.specials == "ieee":  # the all-ones exponent is inf/nan: the largest finite uses one less
        max_e, max_m = top_field - 1, 2 ** M - 1
    elif fmt.specials == "fn":  # only all-ones exponent AND mantissa is nan
        max_e, max_m = top_field, 2 ** M - 2
    else:  # fnuz / none: every pattern but the nan (if any) is a number
        max_e, max_m = top_field, 2 ** M - 1
    largest = math.ldexp(1 + max_m / 2 ** M, max_e - fmt.bias)
    return FormatRange(
        bits=fmt.bits, max=largest, smallest_normal=math.ldexp(1.0, 1 - fmt.bias),
        smallest_subnormal=math.ldexp(1.0, 1 - fmt.bias - M), eps=math.ldexp(1.0, -M),
        decimal_digits=(M + 1) * math.log10(2),
    )


def int_format(fmt):
    """An integer format from its name ('int8', 'int4', ...), or `fmt` itself."""
    if isinstance(fmt, str):
        if fmt not in INT_FORMATS:
            raise ValueError(f"format={fmt!r} is not a known integer format; allowed: {sorted(INT_FORMATS)}")
        return INT_FORMATS[fmt]
    return fmt


def int_range(fmt) -> tuple[int, int]:
    """(min, max) of an integer format."""
    fmt = int_format(fmt)
    return fmt.min, fmt.max


def int_bits(value: int, fmt) -> str:
    """Two's-complement bits of `value` in an integer format ('int8', 'int4', ...)."""
    fmt = int_format(fmt)
    lo, hi = fmt.min, fmt.max
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"value={value!r}: {fmt.name} holds integers {lo}..{hi}")
    return format(value & (2 ** fmt.bits - 1), f"0{fmt.bits}b")


def all_values(fmt) -> torch.Tensor:
    """Every finite value a format of at most 16 bits can hold, sorted, without duplicates (-0 = 0)."""
    fmt = float_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"format={fmt.name!r} has {fmt.bits} bits: too many patterns to list (at most 16 bits)")
    values = {decode(b, fmt).value for b in range(2 ** fmt.bits)}
    return torch.tensor(sorted(v for v in values if math.isfinite(v)), dtype=torch.float64)


def relative_gap(x: float, fmt) -> float:
    """Distance from |x| (stored in fmt) to the next larger value, relative to |x|: the local precision."""
    fmt = float_format(fmt)
    pattern = bits_of(abs(x), fmt)
    here, above = decode(pattern, fmt).value, decode(pattern + 1, fmt).value
    if here == 0 or not math.isfinite(above):
        raise ValueError(f"x={x!r}: no finite neighbour above it in {fmt.name} (zero, or the largest value)")
    return (above - here) / here


def draw_bits(x: float, formats=("fp32", "fp16", "bf16", "fp8 e4m3", "fp8 e5m2")):
    """A figure: the bits of `x` in each format, coloured by field, with the value each stores."""
    import matplotlib.pyplot as plt

    formats = [float_format(f) for f in formats]
    colours = {"sign": "#e45756", "exponent": "#4c78a8", "mantissa": "#72b7b2"}
    fig, ax = plt.subplots(figsize=(12, 0.7 * len(formats) + 1))
    for row, fmt in enumerate(formats):
        y = len(formats) - 1 - row
        fields = bit_fields(x, fmt)
        col = 0
        for field, text in zip(("sign", "exponent", "mantissa"), fields, strict=True):
            for bit in text:
                ax.add_patch(plt.Rectangle((col, y), 0.9, 0.8, color=colours[field], alpha=0.85))
                ax.text(col + 0.45, y + 0.4, bit, ha="center", va="center", color="white", fontsize=8)
                col += 1
        value = stored_value(x, fmt)
        ax.text(-0.5, y + 0.4, fmt.name, ha="right", va="center", fontsize=9)
        ax.text(33, y + 0.4, f"= {value:.9g}   (error {abs(value - x):.2g})", va="center", fontsize=9)
    for field, colour in colours.items():
        ax.bar(0, 0, color=colour, label=field)
    ax.legend(loc="upper right", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(1.0, 1.25))
    ax.set_xlim(-5, 48)
    ax.set_ylim(-0.2, len(formats) + 0.1)
    ax.set_xlabel("bit position (most significant first)")
    ax.set_yticks([])
    ax.set_title(f"The bits that store x = {x!r}: sign, exponent (range) and mantissa (precision)")
    return fig
