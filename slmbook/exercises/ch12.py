"""Chapter 12's exercises: quantize by hand, then count what a quantized weight really costs."""

from __future__ import annotations

import torch

from slmbook.exercises import Result, verdict
from slmbook.quantization import quantize

# The weights of exercise 1: one row of a matrix, small enough to quantize with pencil and paper.
ROW = (0.1, -0.5, 1.27, 0.03, -0.254)


def absmax_int8_codes() -> list[int]:
    """int8 absmax codes of ROW (scale = max|w| / 127, code = round(w / scale))."""
    return quantize(torch.tensor([ROW]), bits=8, scheme="absmax", granularity="tensor").int_codes().reshape(-1).tolist()


def check_absmax_codes(answer) -> Result:
    """Exercise 1: the int8 absmax codes of ROW, as a list of 5 integers."""
    ok = isinstance(answer, (list, tuple)) and list(answer) == absmax_int8_codes()
    return verdict("chapter 12: int8 absmax codes", answer, ok,
                   hint="the scale is max|w| / 127 = 1.27 / 127 = 0.01; divide each weight by it and round "
                        "to the nearest integer")


def zero_point_group_bits(group_size: int = 32) -> float:
    """Bits per weight of int4 zero-point quantization with one fp32 scale and one 8-bit zero point
    per group of `group_size` weights (measured on a real QuantizedTensor)."""
    weight = torch.randn(8, 4 * group_size, generator=torch.Generator().manual_seed(0))
    return quantize(weight, bits=4, scheme="zeropoint", granularity="group", group_size=group_size).bits_per_weight


def check_group_bits(answer) -> Result:
    """Exercise 2: bits per weight of int4 zero-point, groups of 32, fp32 scale + uint8 zero point."""
    ok = answer is not None and isinstance(answer, (int, float)) and abs(answer - zero_point_group_bits(32)) < 1e-9
    return verdict("chapter 12: bits per weight with group-wise scales", answer, ok,
                   hint="4 bits per code, plus (32 + 8) bits of scale and zero point shared by 32 weights")
