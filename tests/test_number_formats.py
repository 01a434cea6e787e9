import math

import pytest
import torch

from slmbook import number_formats as nf

TORCH_FORMATS = [f for f in nf.FLOAT_FORMATS.values() if f.torch_dtype is not None]


def _torch_values(fmt, patterns: torch.Tensor) -> torch.Tensor:
    """Values torch itself gives the bit patterns (reinterpret the bits, then widen to float64)."""
    view = {32: torch.int32, 16: torch.int16, 8: torch.uint8}[fmt.bits]
    if fmt.bits < 32 and view is not torch.uint8:
        patterns = torch.where(patterns >= 2 ** (fmt.bits - 1), patterns - 2 ** fmt.bits, patterns)
    elif fmt.bits == 32:
        patterns = torch.where(patterns >= 2 ** 31, patterns - 2 ** 32, patterns)
    return patterns.to(view).view(fmt.torch_dtype).to(torch.float64)


def _same(ours: list[float], theirs: torch.Tensor) -> bool:
    ours = torch.tensor(ours, dtype=torch.float64)
    both_nan = ours.isnan() & theirs.isnan()
    return bool(((ours == theirs) | both_nan).all()) and bool((ours.isnan() == theirs.isnan()).all())


@pytest.mark.parametrize("fmt", [f for f in TORCH_FORMATS if f.bits <= 16], ids=lambda f: f.name)
def test_decode_agrees_with_torch_on_every_bit_pattern(fmt):
    patterns = torch.arange(2 ** fmt.bits, dtype=torch.int64)
    ours = [nf.decode(int(b), fmt).value for b in patterns]
    assert _same(ours, _torch_values(fmt, patterns))


def test_decode_agrees_with_torch_on_random_fp32_patterns():
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2 ** 32, (20_000,), generator=gen, dtype=torch.int64)
    special = torch.tensor([0, 1, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000, 0x7FC00000, 0x80000000,
                            0xFF800000], dtype=torch.int64)
    patterns = torch.cat([patterns, special])
    ours = [nf.decode(int(b), nf.FP32).value for b in patterns]
    assert _same(ours, _torch_values(nf.FP32, patterns))


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=lambda f: f.name)
def test_range_from_the_bit_layout_matches_torch_finfo(fmt):
    finfo = torch.finfo(fmt.torch_dtype)
    r = nf.format_range(fmt)
    assert r.bits == finfo.bits
    assert r.max == finfo.max
    assert r.smallest_normal == finfo.smallest_normal
    # eps: the gap above 1.0 among torch's own values (torch.finfo(float8_e5m2fnuz).eps says 0.125,
    # but its values 1.0 and 1.25 are neighbours, so we measure instead of trusting finfo there)
    values = _torch_values(fmt, torch.arange(2 ** min(fmt.bits, 16))) if fmt.bits <= 16 else None
    if values is not None:
        one = int((values == 1.0).nonzero()[0])
        assert r.eps == (values[one + 1] - 1.0).item()
    if fmt is not nf.FP8_E5M2_FNUZ:
        assert r.eps == finfo.eps
    # the smallest subnormal is the value of bit pattern 1
    assert r.smallest_subnormal == _torch_values(fmt, torch.tensor([1])).item()


@pytest.mark.parametrize("x, fmt, pattern", [
    (1.0, "fp32", 0x3F800000), (-2.0, "fp32", 0xC0000000), (math.pi, "fp32", 0x40490FDB),
    (1.0, "fp16", 0x3C00), (65504.0, "fp16", 0x7BFF), (-0.0, "fp16", 0x8000),
    (1.0, "bf16", 0x3F80), (math.pi, "bf16", 0x4049),
    (1.0, "fp8 e4m3", 0x38), (448.0, "fp8 e4m3", 0x7E), (-1.5, "fp8 e4m3", 0xBC),
    (1.0, "fp8 e5m2", 0x3C), (57344.0, "fp8 e5m2", 0x7B), (float("inf"), "fp8 e5m2", 0x7C),
])
def test_known_bit_patterns(x, fmt, pattern):
    assert nf.bits_of(x, fmt) == pattern
    decoded = nf.decode(pattern, fmt)
    assert decoded.value == torch.tensor(x).to(nf.float_format(fmt).torch_dtype).item()
    assert decoded.value == x or math.isinf(x) or x == math.pi  # pi is rounded, the others exact


def test_fields_and_kinds():
    assert nf.bit_fields(-2.0, "fp32") == ("1", "10000000", "0" * 23)
    d = nf.decode(0x3FC00000, "fp32")  # 1.5
    assert (d.sign, d.exponent, d.significand, d.kind) == (0, 0, 1.5, "normal")
    assert nf.decode(0x0001, "fp16").kind == "subnormal"
    assert nf.decode(0x7F, "fp8 e4m3").kind == "nan"
    assert nf.decode(0x78, "fp8 e4m3").value == 256.0  # all-ones exponent is a number in e4m3fn
    assert nf.decode(0x80, "fp8 e4m3 fnuz").kind == "nan"


def test_fp4_e2m1_values_are_the_ocp_table():
    # OCP Microscaling spec, E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives
    positive = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert nf.all_values("fp4 e2m1").tolist() == sorted({-v for v in positive} | set(positive))
    assert nf.format_range("fp4 e2m1").max == 6.0


def test_precision_bf16_vs_fp16():
    # relative gap just above 1 is eps; bf16 keeps fp32's range, fp16 does not
    assert nf.relative_gap(1.0, "bf16") == torch.finfo(torch.bfloat16).eps
    assert nf.relative_gap(1.0, "fp16") == torch.finfo(torch.float16).eps
    assert math.isinf(nf.stored_value(1e5, "fp16"))
    assert nf.stored_value(1e5, "bf16") == pytest.approx(1e5, rel=2 ** -8)


def test_integer_formats():
    assert nf.int_range("int8") == (torch.iinfo(torch.int8).min, torch.iinfo(torch.int8).max)
    assert nf.int_range("uint8") == (0, 255)
    assert nf.int_range("int4") == (-8, 7)
    assert nf.int_bits(-1, "int4") == "1111" and nf.int_bits(5, "int8") == "00000101"
    assert nf.int_bits(-128, "int8") == format(torch.tensor(-128, dtype=torch.int8).view(torch.uint8).item(), "08b")
    with pytest.raises(ValueError, match="int4 holds integers -8..7"):
        nf.int_bits(8, "int4")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="format='fp12'"):
        nf.decode(0, "fp12")
    with pytest.raises(ValueError, match="bits=256"):
        nf.decode(256, "fp8 e4m3")
    with pytest.raises(ValueError, match="no torch dtype"):
        nf.bits_of(1.0, "fp4 e2m1")


def test_draw_bits_makes_a_labelled_figure():
    import matplotlib

    matplotlib.use("Agg")
    fig = nf.draw_bits(0.1)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel()
    matplotlib.pyplot.close(fig)
