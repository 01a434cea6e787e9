"""Device description and measurements: sane positive numbers and clear errors (no timing asserts:
a timing is a benchmark, not a pass/fail test)."""

import math

import pytest
import torch

from slmbook import hardware


@pytest.mark.parametrize("dtype", ["fp32", "bf16", torch.float32, "float32"])
def test_matmul_tflops_is_a_positive_finite_number(dtype):
    tflops = hardware.measure_matmul_tflops(dtype, size=64, device="cpu", repeats=2, warmup=1)
    assert isinstance(tflops, float) and tflops > 0 and math.isfinite(tflops)


def test_bandwidth_is_a_positive_finite_number():
    gbs = hardware.measure_bandwidth("cpu", n_bytes=2**20, repeats=2, warmup=1)
    assert isinstance(gbs, float) and gbs > 0 and math.isfinite(gbs)


def test_matmul_measurement_restores_float32_precision():
    before = torch.get_float32_matmul_precision()
    hardware.measure_matmul_tflops("fp32", size=16, device="cpu", repeats=1)
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("kwargs,match", [
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(dtype="fp32", size=0), "size=0"),
    (dict(dtype="fp32", size=8, repeats=0), "repeats=0"),
    (dict(dtype="tf32", size=8, device="cpu"), "tf32"),
    (dict(dtype="fp32", size=8, device="tpu"), "device='tpu'"),
])
def test_matmul_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hardware.measure_matmul_tflops(**{"device": "cpu", **kwargs})


def test_bandwidth_rejects_bad_input():
    with pytest.raises(ValueError, match="n_bytes=2"):
        hardware.measure_bandwidth("cpu", n_bytes=2)


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A10G", "A10"),
    ("Tesla T4", "T4"),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"),
])
def test_known_peaks_match_gpu_names(name, expected):
    assert hardware.known_peak(name).name == expected


def test_peak_table_facts():
    h100 = hardware.known_peak("NVIDIA H100 80GB HBM3")
    assert h100.tflops["bf16"] == 989.4 and h100.bandwidth_gbs == 3350
    assert "bf16" not in hardware.known_peak("Tesla T4").tflops  # T4 (Turing) has no bfloat16 units
    assert hardware.known_peak("Some Future GPU") is None
    for _, peak in hardware.PEAK_TABLE:  # tensor cores: half precision at least 2x fp32 throughput
        half = peak.tflops.get("bf16", peak.tflops.get("fp16"))
        assert half >= 1.9 * peak.tflops["fp32"]


def test_describe_cpu():
    info = hardware.describe_device("cpu")
    assert info["device"] == "cpu" and "CPU cores" in info["compute units"] and info["peak"] is None


def test_roofline():
    # an n x n bf16 matmul moves 3 n^2 * 2 bytes for 2 n^3 FLOPs
    assert hardware.matmul_arithmetic_intensity(4096, "bf16") == pytest.approx(2 * 4096 / 6)
    assert hardware.matmul_arithmetic_intensity(4096, "fp32") == pytest.approx(2 * 4096 / 12)
    assert hardware.attainable_tflops(10.0, 989.4, 3350) == pytest.approx(33.5)  # memory-bound
    assert hardware.attainable_tflops(1e4, 989.4, 3350) == 989.4  # compute-bound
    with pytest.raises(ValueError, match="bandwidth_gbs=0"):
        hardware.attainable_tflops(1.0, 1.0, 0)


def test_median_seconds_takes_the_median_of_the_timed_calls(monkeypatch):
    """A fake clock: call k of fn lasts k seconds; 1 warm-up then 5 timed calls -> durations 2..6."""
    clock, calls = {"now": 0.0}, []
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: clock["now"])

    def fn():
        calls.append(1)
        clock["now"] += len(calls)

    assert hardware.median_seconds(fn, torch.device("cpu"), repeats=5, warmup=1) == 4.0
    assert len(calls) == 6
