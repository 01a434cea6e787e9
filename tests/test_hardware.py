"""Device description and measurements: sane positive numbers and clear errors (no timing asserts:
a timing is a benchmark, not a pass/fail test)."""

import dataclasses
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


@pytest.mark.parametrize("name,sms,cores,capability", [
    ("NVIDIA H100 80GB HBM3", 132, 16896, (9, 0)),  # Hopper whitepaper: 132 SMs x 128 FP32 lanes
    ("NVIDIA A100-SXM4-80GB", 108, 6912, (8, 0)),  # Ampere GA100: 108 SMs x 64
    ("Tesla T4", 40, 2560, (7, 5)),  # Turing TU104 as shipped in the T4
    ("NVIDIA GeForce RTX 4090", 128, 16384, (8, 9)),
])
def test_peak_table_architecture(name, sms, cores, capability):
    peak = hardware.known_peak(name)
    assert (peak.sms, peak.fp32_cores, peak.compute_capability) == (sms, cores, capability)


def test_native_bf16_entries_follow_the_compute_capability():
    from slmbook.env import NATIVE_BF16

    for _, peak in hardware.PEAK_TABLE:
        assert ("bf16" in peak.tflops) == (peak.compute_capability >= NATIVE_BF16), peak.name
        assert peak.fp32_cores % peak.sms == 0 and peak.fp32_cores // peak.sms in (64, 128), peak.name


def test_training_precision_is_the_precision_plan_rule():
    assert hardware.training_precision(hardware.known_peak("NVIDIA H100 80GB HBM3")) == "bf16"
    assert hardware.training_precision(hardware.known_peak("Tesla T4")) == "fp16"
    old = dataclasses.replace(hardware.known_peak("Tesla T4"), compute_capability=(6, 1))
    assert hardware.training_precision(old) == "fp32"


def test_gpu_options_rows():
    h100, t4 = hardware.known_peak("NVIDIA H100 80GB HBM3"), hardware.known_peak("Tesla T4")
    rows = hardware.gpu_options({"small": 11e9, "large": 60e9}, train_flops=3.6e15, mfu=0.5, headroom=1.5,
                                peaks=[h100, t4])
    assert [r["gpu"] for r in rows] == ["H100 SXM", "T4"]
    assert rows[0]["small"] and not rows[0]["large"]  # 16.5 GB and 90 GB against 80 GB
    assert rows[0]["hours"] == pytest.approx(3.6e15 / (0.5 * 989.4e12) / 3600)
    assert rows[1]["trains in"] == "fp16" and rows[1]["native bf16"] is False
    assert rows[1]["hours"] == pytest.approx(3.6e15 / (0.5 * 65e12) / 3600)
    assert not rows[1]["small"]  # 11 GB fits in 16 GB, but not with the 1.5 x headroom
    assert hardware.gpu_options({"small": 11e9}, 1.0, peaks=[t4])[0]["small"]
    with pytest.raises(ValueError, match="headroom=0.5"):
        hardware.gpu_options({"x": 1.0}, 1.0, headroom=0.5)
    with pytest.raises(ValueError, match=r"needs\['x'\]=0"):
        hardware.gpu_options({"x": 0}, 1.0)
    with pytest.raises(ValueError, match="mfu=0"):
        hardware.gpu_options({"x": 1.0}, 1.0, mfu=0)


def test_overhead_and_its_ceiling():
    for dtype in ("fp32", "bf16"):
        seconds = hardware.call_overhead_seconds("cpu", dtype, repeats=20, trials=2)
        assert 0 < seconds < 0.1 and math.isfinite(seconds)
    with pytest.raises(ValueError, match="dtype='int8'"):
        hardware.call_overhead_seconds("cpu", "int8")
    assert hardware.overhead_ceiling_tflops(100, 1e-6) == pytest.approx(2e6 / 1e-6 / 1e12)
    with pytest.raises(ValueError, match="overhead_seconds=0"):
        hardware.overhead_ceiling_tflops(8, 0)


def test_thread_scaling_restores_the_thread_count():
    before = torch.get_num_threads()
    rates = hardware.matmul_thread_scaling([1], size=32, repeats=2, trials=1)
    assert list(rates) == [1] and rates[1] > 0
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads item=0"):
        hardware.matmul_thread_scaling([0])


def test_op_calls_against_the_aten_operations():
    a, b = torch.ones(4, 8), torch.ones(4, 8)
    calls = hardware.op_calls(lambda: a + b)
    assert calls == [hardware.OpCall("add", 2 * 4 * 8 * 4, 4 * 8 * 4)]
    x = torch.randn(3, 16)
    names = [c.name for c in hardware.op_calls(lambda: torch.nn.functional.layer_norm(x, (16,)))]
    assert names == ["native_layer_norm"]  # one fused ATen kernel


def test_gpu_measurements_in_the_repository():
    files = hardware.gpu_measurement_files()
    assert files, "benchmarks/results/gpu_measurements_*.json ships with the repository"
    data = hardware.load_gpu_measurements(files[0])
    assert data["hardware"]["gpu"] and data["memory"][0]["measured_peak"] > 0
    assert hardware.gpu_measurement_files("/nonexistent/folder") == []


def test_load_gpu_measurements_refuses_other_json(tmp_path):
    path = tmp_path / "gpu_measurements_x.json"
    path.write_text('{"hardware": {}}')
    with pytest.raises(ValueError, match="missing"):
        hardware.load_gpu_measurements(path)
