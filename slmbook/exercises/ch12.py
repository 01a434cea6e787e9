"""Chapter 12's exercises: quantize by hand, then count what a quantized weight really costs.

Exercise 2's format (GPTQ-style: float16 scales, 4-bit zero points, groups of 128) is one the chapter
never builds, so neither its bits nor its bytes are printed there or one call away. A hint appears
only after a wrong try.
"""

from __future__ import annotations

import torch

from slmbook.exercises import Result, exact_int, not_attempted, verdict
from slmbook.quantization import pack_int4, quantize

# The weights of exercise 1: one row of a matrix, small enough to quantize with pencil and paper.
ROW = (0.1, -0.5, 1.27, 0.03, -0.254)

# Exercise 2: Qwen3-0.6B's up-projection (3,072 rows of 1,024 inputs) in a GPTQ-style int4 format:
# two 4-bit codes per byte, and per group of 128 weights of a row one float16 scale and one 4-bit
# zero point (zero points packed two per byte as well).
SHAPE = (3072, 1024)
GROUP_SIZE = 128


def absmax_int8_codes() -> list[int]:
    """int8 absmax codes of ROW (scale = max|w| / 127, code = round(w / scale))."""
    return quantize(torch.tensor([ROW]), bits=8, scheme="absmax", granularity="tensor").int_codes().reshape(-1).tolist()


def check_absmax_codes(answer) -> Result:
    """Exercise 1: the int8 absmax codes of ROW, as a list of 5 integers."""
    name = "chapter 12: int8 absmax codes"
    if answer is None:
        return not_attempted(name)
    ok = isinstance(answer, (list, tuple)) and list(answer) == absmax_int8_codes()
    return verdict(name, answer, ok,
                   hint="the scale is max|w| / 127 = 1.27 / 127 = 0.01; divide each weight by it and round "
                        "to the nearest integer")


def gptq_style_bytes(shape: tuple[int, int] = SHAPE, group_size: int = GROUP_SIZE) -> int:
    """Bytes of exercise 2's format, measured on the tensors it would store: packed codes, float16
    scales and packed 4-bit zero points."""
    rows, cols = shape
    groups = cols // group_size
    codes = pack_int4(torch.zeros(rows, cols, dtype=torch.uint8))
    scales = torch.zeros(rows, groups, dtype=torch.float16)
    zero_points = pack_int4(torch.zeros(rows, groups, dtype=torch.uint8))
    return sum(t.numel() * t.element_size() for t in (codes, scales, zero_points))


def check_gptq_bytes(answer) -> Result:
    """Exercise 2: bytes of a 3,072 x 1,024 matrix stored as int4 codes with, per group of 128
    weights, a float16 scale and a 4-bit zero point (everything 4-bit packed two per byte)."""
    name = "chapter 12: bytes of a GPTQ-style int4 matrix"
    if answer is None:
        return not_attempted(name)
    expected = gptq_style_bytes()
    rows, cols = SHAPE
    if exact_int(answer, rows * cols // 2):
        return Result(name, "wrong", "those are the codes alone; every group of 128 also stores a scale and a "
                                     "zero point")
    return verdict(name, answer, exact_int(answer, expected),
                   hint=f"codes: {rows:,} x {cols:,} weights at 4 bits; groups: {cols // GROUP_SIZE} per row, "
                        "each with 16 + 4 bits of scale and zero point; add them up and divide by 8",
                   success=f"correct: {expected:,} bytes, {8 * expected / (rows * cols):.4f} bits per weight")
