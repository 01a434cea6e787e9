"""What the device is and how fast it really is (chapter 3).

Spec sheets promise a peak; a measurement tells you what a large matrix product and a large copy
actually reach on your machine. `measure_matmul_tflops` times n x n products (2 n^3 FLOPs each),
`measure_bandwidth` times a large copy (every byte read once and written once), and
`PEAK_TABLE` lists what NVIDIA publishes for common GPUs so the two can be compared (and so chapter 14
can turn tokens per second into MFU). Small operations are limited by neither: `call_overhead_seconds`
measures the fixed cost of one call, and `op_calls` lists the operations (kernel passes) a layer
runs. `gpu_options` turns the table and the memory estimates into a choice of GPU.
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
    """What a GPU's data sheet promises: dense (no 2:4 sparsity) peak throughput in TFLOP/s per
    precision, memory bandwidth in GB/s and memory in GB; and how it is built: streaming
    multiprocessors (SMs), float32 lanes ("CUDA cores") over all SMs, and the compute capability,
    which decides the training precision (`slmbook.env.precision_plan`)."""

    name: str
    tflops: dict  # precision -> TFLOP/s; a precision the chip cannot run is absent
    bandwidth_gbs: float
    memory_gb: float
    sms: int
    fp32_cores: int
    compute_capability: tuple[int, int]


# NVIDIA data sheets and architecture whitepapers, dense figures (the sheets' headline tensor-core
# numbers assume 2:4 sparsity and are twice these). Order matters: the first entry whose every
# pattern is in the name wins.
PEAK_TABLE: tuple[tuple[tuple[str, ...], Peak], ...] = (
    (("H200",), Peak("H200 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}, 4800, 141,
                     132, 16896, (9, 0))),
    (("H100", "PCIe"), Peak("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "fp8": 1513.0}, 2000, 80,
                            114, 14592, (9, 0))),
    (("H100",), Peak("H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}, 3350, 80,
                     132, 16896, (9, 0))),
    (("A100", "80GB", "PCIe"), Peak("A100 PCIe 80GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1935, 80,
                                    108, 6912, (8, 0))),
    (("A100", "80GB"), Peak("A100 SXM 80GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2039, 80,
                            108, 6912, (8, 0))),
    (("A100",), Peak("A100 40GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 1555, 40,
                     108, 6912, (8, 0))),
    (("L40S",), Peak("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0, "fp8": 733.0}, 864, 48,
                     142, 18176, (8, 9))),
    (("L40",), Peak("L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0, "fp16": 181.0, "fp8": 362.0}, 864, 48,
                    142, 18176, (8, 9))),
    (("L4",), Peak("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.0}, 300, 24,
                   58, 7424, (8, 9))),
    (("A10",), Peak("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}, 600, 24,
                    72, 9216, (8, 6))),
    (("T4",), Peak("T4", {"fp32": 8.1, "fp16": 65.0}, 320, 16, 40, 2560, (7, 5))),
    (("V100",), Peak("V100 SXM2", {"fp32": 15.7, "fp16": 125.0}, 900, 16, 80, 5120, (7, 0))),
    (("RTX 4090",), Peak("GeForce RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}, 1008, 24,
                         128, 16384, (8, 9))),
    (("RTX 3090",), Peak("GeForce RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0}, 936, 24,
                         82, 10496, (8, 6))),
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


def call_overhead_seconds(device: str | torch.device = "auto", dtype="fp32", repeats: int = 1000,
                          trials: int = 5) -> float:
    """Seconds of one call that does almost nothing: a 1 x 1 matrix product in `dtype`, the least
    disturbed (smallest) of `trials` averages over `repeats` calls. Every operation pays this fixed
    cost (Python, PyTorch's dispatcher, on a GPU the kernel launch) before any arithmetic, so a
    product of n x n matrices cannot run faster than 2 n^3 FLOPs / this time: the overhead ceiling.
    The cost depends on the precision (a CPU may convert bfloat16 inputs before multiplying)."""
    name = precision_name(dtype)
    _check_count("repeats", repeats)
    _check_count("trials", trials)
    dev = pick_device(device)
    a = torch.ones(1, 1, device=dev, dtype=PRECISIONS[name])
    out = torch.empty_like(a)
    return min(_time(lambda: torch.matmul(a, a, out=out), dev, repeats, warmup=10) for _ in range(trials))


def overhead_ceiling_tflops(size: int, overhead_seconds: float) -> float:
    """The most TFLOP/s an n x n product can reach when every call costs `overhead_seconds` first."""
    _check_count("size", size)
    if not overhead_seconds > 0:
        raise ValueError(f"overhead_seconds={overhead_seconds!r}: must be > 0")
    return 2 * size**3 / overhead_seconds / 1e12


def matmul_thread_scaling(threads, size: int = 512, dtype="fp32", repeats: int = 5, trials: int = 3) -> dict[int, float]:
    """TFLOP/s of a (size x size) product on the CPU with each number of threads in `threads`
    (the best of `trials` timings each). A CPU parallelises a product by splitting it over its cores,
    so on an idle machine the rate grows with the threads up to the number of physical cores.
    The thread count of the process is restored afterwards."""
    threads = list(threads)
    if not threads:
        raise ValueError("threads=[]: give at least one thread count")
    for n in threads:
        _check_count("threads item", n)
    before = torch.get_num_threads()
    try:
        rates = {}
        for n in threads:
            torch.set_num_threads(n)
            rates[n] = max(measure_matmul_tflops(dtype, size, "cpu", repeats=repeats, warmup=1) for _ in range(trials))
    finally:
        torch.set_num_threads(before)
    return rates


@dataclass(frozen=True)
class OpCall:
    """One operation PyTorch ran: its ATen name and the bytes of its tensor inputs and outputs."""

    name: str
    bytes_read: int
    bytes_written: int


def _tensor_bytes(values) -> int:
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            total += _tensor_bytes(value)
    return total


def op_calls(fn) -> list[OpCall]:
    """The ATen operations that calling `fn()` runs, in order, with the bytes each reads and writes.

    Every such operation is at least one pass of a kernel over its tensors. A layer written as six
    elementwise operations reads and writes its input six times where one fused kernel reads it once,
    which is what decides the speed of memory-bound layers such as the norms (chapter 10)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            written = _tensor_bytes(out if isinstance(out, (list, tuple)) else [out])
            calls.append(OpCall(str(func.overloadpacket.__name__), _tensor_bytes(list(args) + list(kwargs.values())),
                                written))
            return out

    with Recorder():
        fn()
    return calls


def training_precision(peak: Peak) -> str:
    """The precision `slmbook.env.precision_plan` trains in on this GPU: 'bf16' from compute
    capability 8.0 (native bfloat16 tensor cores), 'fp16' with loss scaling on 7.x, else 'fp32'."""
    from slmbook.env import NATIVE_BF16, TENSOR_CORES

    if peak.compute_capability >= NATIVE_BF16:
        return "bf16"
    return "fp16" if peak.compute_capability >= TENSOR_CORES else "fp32"


def gpu_options(needs: dict, train_flops: float, mfu: float = 0.4, headroom: float = 1.0, peaks=None) -> list[dict]:
    """One row per GPU of the published table (or `peaks`): what it offers and what fits on it.

    needs: name -> bytes a run needs (e.g. `slmbook.memory.training_memory(...).peak`); a need fits
    when need * headroom <= the data-sheet memory (GB, 1e9 bytes). headroom covers what the caching
    allocator reserves beyond the tensors (chapter 3 measures it on an H100).
    train_flops: FLOPs of a training run, turned into hours at `mfu` of the GPU's peak in the
    precision it trains in (`training_precision`).
    """
    if not train_flops > 0:
        raise ValueError(f"train_flops={train_flops!r}: must be > 0")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu!r}: must be in (0, 1]")
    if not headroom >= 1:
        raise ValueError(f"headroom={headroom!r}: must be >= 1 (1 = the tensors alone)")
    for name, need in needs.items():
        if not need > 0:
            raise ValueError(f"needs[{name!r}]={need!r}: must be a positive number of bytes")
    rows = []
    for peak in peaks if peaks is not None else [p for _, p in PEAK_TABLE]:
        precision = training_precision(peak)
        tflops = peak.tflops[precision]
        row = {"gpu": peak.name, "memory (GB)": peak.memory_gb, "native bf16": "bf16" in peak.tflops,
               "trains in": precision, "peak TFLOP/s": tflops, "bandwidth (GB/s)": peak.bandwidth_gbs,
               "hours": train_flops / (mfu * tflops * 1e12) / 3600}
        for name, need in needs.items():
            row[name] = need * headroom <= peak.memory_gb * 1e9
        rows.append(row)
    return rows


def gpu_measurement_files(folder: str | Path | None = None) -> list[Path]:
    """The GPU measurement files of `benchmarks/gpu_measurements.py` (gpu_measurements_*.json),
    by default in the source checkout's benchmarks/results/. Empty when there are none (a package
    installed without the repository, e.g. on Colab, has no benchmarks/ folder)."""
    from slmbook.data import benchmark_results

    return benchmark_results("gpu_measurements_*.json", folder)


def load_gpu_measurements(path: str | Path) -> dict:
    """One measurement file: its 'hardware', 'matmul', 'bandwidth' and 'memory' sections."""
    import json

    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in ("hardware", "matmul", "bandwidth", "memory") if key not in data]
    if missing:
        raise ValueError(f"{path}: not a gpu_measurements file (missing {missing}); "
                         f"benchmarks/gpu_measurements.py writes them")
    return data
