"""What the device is and how fast it really is (chapter 3).

Spec sheets promise a peak; a measurement tells you what a large matrix product and a large copy
actually reach on your machine. `measure_matmul_tflops` times n x n products (2 n^3 FLOPs each),
`measure_bandwidth` times a large copy (every byte read once and written once), and
`PEAK` lists what NVIDIA publishes for common GPUs so the two can be compared (and so chapter 14
can turn tokens per second into MFU).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slmbook.env import pick_device


@dataclass(frozen=True)
class Peak:
    """Published dense (no 2:4 sparsity) peak throughput in TFLOP/s and memory bandwidth in GB/s."""

    name: str
    tflops: dict  # precision -> TFLOP/s; a precision the chip cannot run is absent
    bandwidth_gbs: float
    memory_gb: float


# NVIDIA data sheets, dense figures (the sheets' headline tensor-core numbers assume 2:4 sparsity
# and are twice these). Order matters: the first entry whose every pattern is in the name wins.
PEAK_TABLE: tuple[tuple[tuple[str, ...], Peak], ...] = (
    (("H200",), Peak("H200 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}, 4800, 141)),
    (("H100", "PCIe"), Peak("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "fp8": 1513.0}, 2000, 80)),
    (("H100",), Peak("H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}, 3350, 80)),
    (("A100", "80GB", "PCIe"), Peak("A100 PCIe 80GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1935, 80)),
    (("A100", "80GB"), Peak("A100 SXM 80GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2039, 80)),
    (("A100",), Peak("A100 40GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1555, 40)),
    (("L40S",), Peak("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0, "fp8": 733.0}, 864, 48)),
    (("L40",), Peak("L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0, "fp16": 181.0, "fp8": 362.0}, 864, 48)),
    (("L4",), Peak("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.0}, 300, 24)),
    (("A10",), Peak("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}, 600, 24)),
    (("T4",), Peak("T4", {"fp32": 8.1, "fp16": 65.0}, 320, 16)),
    (("V100",), Peak("V100 SXM2", {"fp32": 15.7, "fp16": 125.0}, 900, 16)),
    (("RTX 4090",), Peak("GeForce RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}, 1008, 24)),
    (("RTX 3090",), Peak("GeForce RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0}, 936, 24)),
)

# The book's names for precisions, and the torch dtype each multiplies in ("tf32" is float32
# tensors multiplied on tensor cores with a 10-bit mantissa).
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", torch.float32: "fp32",
            torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(dtype) -> str:
    """'fp32', 'tf32', 'bf16' or 'fp16' for a name or a torch dtype."""
    name = _ALIASES.get(dtype, dtype)
    if name not in PRECISIONS:
        raise ValueError(f"dtype={dtype!r} is unknown; allowed: {sorted(PRECISIONS)} (or torch dtypes / long names)")
    return name


def known_peak(device_name: str) -> Peak | None:
    """The published peak for a GPU name as torch reports it ('NVIDIA H100 80GB HBM3'), or None."""
    for patterns, peak in PEAK_TABLE:
        if all(p.lower() in device_name.lower() for p in patterns):
            return peak
    return None


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), for benchmark tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: str | torch.device = "auto") -> dict:
    """Name, memory and compute units of the device; on a GPU also its published peak if known."""
    dev = pick_device(device)
    info = {"device": str(dev), "name": None, "memory (GiB)": None, "compute units": None, "peak": None}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update({
            "name": props.name,
            "memory (GiB)": round(props.total_memory / 2**30, 1),
            "compute units": f"{props.multi_processor_count} SMs",
            "compute capability": f"{props.major}.{props.minor}",
            "peak": known_peak(props.name),
        })
    else:
        info.update({
            "name": platform.processor() or platform.machine(),
            "compute units": f"{os.cpu_count()} CPU cores ({torch.get_num_threads()} torch threads)",
        })
        if dev.type == "cpu":
            try:
                pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                info["memory (GiB)"] = round(pages / 2**30, 1)
            except (ValueError, OSError, AttributeError):  # not every OS exposes these
                pass
    return info


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs ahead of Python; a CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Seconds per call of `fn`, averaged over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)  # wait for queued GPU work so the clock measures only our calls
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def median_seconds(fn, device: torch.device, repeats: int = 15, warmup: int = 1) -> float:
    """Median wall-clock seconds of one call of `fn` over `repeats` calls, each waited for on the
    device, after `warmup` untimed calls: one slow call (a page fault, another process) does not
    move a median the way it moves a mean."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _check_count(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")


def measure_matmul_tflops(dtype="bf16", size: int = 4096, device: str | torch.device = "auto",
                          repeats: int = 10, warmup: int = 2) -> float:
    """Achieved TFLOP/s of an (size x size) @ (size x size) product in `dtype` on `device`.

    dtype: 'fp32', 'tf32' (CUDA only: float32 inputs on tensor cores), 'bf16' or 'fp16'.
    Small sizes measure launch overhead, not the arithmetic units: use >= 4096 on a GPU.
    """
    name = precision_name(dtype)
    _check_count("size", size)
    _check_count("repeats", repeats)
    _check_count("warmup", warmup, minimum=0)
    dev = pick_device(device)
    if name == "tf32" and dev.type != "cuda":
        raise ValueError(f"dtype='tf32' on device={str(dev)!r}: TF32 is a mode of NVIDIA tensor cores; use 'fp32' here")
    generator = torch.Generator(device=dev).manual_seed(0) if dev.type != "mps" else None
    a = torch.randn(size, size, device=dev, dtype=PRECISIONS[name], generator=generator)
    b = torch.randn(size, size, device=dev, dtype=PRECISIONS[name], generator=generator)
    out = torch.empty_like(a)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        seconds = _time(lambda: torch.matmul(a, b, out=out), dev, repeats, warmup)
    finally:
        torch.set_float32_matmul_precision(before)
    return 2 * size**3 / seconds / 1e12


def measure_bandwidth(device: str | torch.device = "auto", n_bytes: int | None = None,
                      repeats: int = 10, warmup: int = 2) -> float:
    """Achieved memory bandwidth in GB/s (1e9 bytes/s): copy `n_bytes` into another buffer, which
    reads and writes every byte once. Default size 1 GiB on a GPU (far larger than its caches),
    256 MiB on a CPU."""
    dev = pick_device(device)
    if n_bytes is None:
        n_bytes = 2**30 if dev.type == "cuda" else 2**28
    _check_count("n_bytes", n_bytes, minimum=4)
    _check_count("repeats", repeats)
    _check_count("warmup", warmup, minimum=0)
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), dev, repeats, warmup)
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_arithmetic_intensity(size: int, dtype="bf16") -> float:
    """FLOPs per byte moved for an n x n matmul: 2 n^3 FLOPs over 3 n^2 elements read or written
    once. Small products are memory-bound (low intensity); large ones compute-bound."""
    _check_count("size", size)
    element = torch.tensor([], dtype=PRECISIONS[precision_name(dtype)]).element_size()
    return 2 * size**3 / (3 * size**2 * element)


def attainable_tflops(intensity: float, peak_tflops: float, bandwidth_gbs: float) -> float:
    """The roofline: min(peak compute, intensity * bandwidth), in TFLOP/s."""
    for name, value in (("intensity", intensity), ("peak_tflops", peak_tflops), ("bandwidth_gbs", bandwidth_gbs)):
        if not value > 0:
            raise ValueError(f"{name}={value!r}: must be > 0")
    return min(peak_tflops, intensity * bandwidth_gbs / 1e3)
