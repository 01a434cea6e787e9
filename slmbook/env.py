"""Where the code runs: device choice, precision plan, seeds, network reachability and an environment report.

Chapter 0 prints `report()` so a reader knows, before anything else, which device, precision and
data source the rest of the book will use on their machine. `precision_plan` decides, from what
the device really does (not what a library emulates), the training precision and which of the
fast paths (torch.compile, the Triton kernel of the fused loss) are known to work there.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import random
import sys
from dataclasses import dataclass

import torch

from slmbook.data import stories_source
from slmbook.hub import online

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # what TrainConfig.precision accepts
NATIVE_BF16 = (8, 0)  # compute capability of the first GPUs (Ampere) whose tensor cores multiply bfloat16
TENSOR_CORES = (7, 0)  # Volta: the first tensor cores (float16 only)
TRITON_SUPPORTED = (8, 0)  # Triton's README lists NVIDIA GPUs of compute capability 8.0+ (older ones run a fallback)


def pick_device(device: str = "auto") -> torch.device:
    """The torch device for `device`: 'auto' takes CUDA, then Apple MPS, then the CPU."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device={device!r}: expected a string, one of {DEVICES}")
    name = str(device)
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"device={name!r} is unknown; allowed: {DEVICES} (optionally 'cuda:N')")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA GPU is visible to torch; use 'cpu' or 'auto'")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} but Apple MPS is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and GPU) so a notebook gives the same numbers each run."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is a dependency; this only guards odd installs
        pass
    torch.manual_seed(seed)


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on `device`: on CUDA, compute capability >= 8.0
    (`torch.cuda.is_bf16_supported()` also says True on a T4, where bfloat16 is only emulated);
    elsewhere tried, not guessed."""
    if device.type == "cuda":
        return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        return bool((a @ a).float().sum().item() == 8.0)
    except (RuntimeError, TypeError):
        return False


@dataclass(frozen=True)
class PrecisionPlan:
    """How a device trains: the autocast dtype and which fast paths are known to work there.

    dtype: autocast dtype (torch.bfloat16 or torch.float16), None for plain float32.
    grad_scaler: float16 needs a torch.amp.GradScaler: its 5 exponent bits flush small gradients to 0
        unless the loss is scaled up before backward (bfloat16 has float32's exponent range).
    compile: torch.compile (its GPU code is Triton) is known to work here.
    fused_loss: the fused output head + loss (`slmbook.fused_loss`, TrainConfig.loss_chunk) is.
    triton: its softmax-gradient step may use the Triton kernel (else the torch expression).
    reason: one line saying why, for the reader.
    """

    device: str
    dtype: torch.dtype | None
    grad_scaler: bool
    compile: bool
    fused_loss: bool
    triton: bool
    reason: str

    @property
    def precision(self) -> str:
        """'bf16', 'fp16' or 'fp32'."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")


def triton_available() -> bool:
    """Whether the triton package is installed (it comes with Linux CUDA builds of PyTorch)."""
    return importlib.util.find_spec("triton") is not None


# Why the fused loss is off under float16: it computes the gradient (softmax - one_hot) / tokens in
# its forward pass, in the autocast dtype, before the GradScaler's factor reaches it in backward.
# With 4,096 tokens and GPT-2's vocabulary, 99% of those float16 values underflow to 0 (measured on
# random logits of unit scale; the hidden states' gradient was 8% off, against 0.2% in bfloat16).
FUSED_LOSS_FP16 = "plain loss: the fused loss's float16 gradient is formed before the GradScaler scales it and underflows"


def precision_plan(device: str | torch.device, precision: str = "auto") -> PrecisionPlan:
    """The training precision and fast paths for `device` ('auto' chooses, 'bf16'/'fp16'/'fp32' force).

    auto: bfloat16 autocast on CUDA GPUs of compute capability >= 8.0 (A100, L4, H100, H200), where
    it is native; float16 autocast with a GradScaler on 7.x (V100, T4), whose tensor cores multiply
    float16 only (a T4 "supports" bfloat16 by emulation, slowly); float32 on older GPUs, on the CPU
    (the reference) and on Apple MPS (no loss scaling and no compiler needed; mixed precision on MPS
    is not tested by the book). torch.compile and the Triton loss kernel only on GPUs that Triton
    supports (8.0+); under float16 the model's plain loss instead of the fused one (FUSED_LOSS_FP16).
    Forcing bf16 where it is not native is refused.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; allowed: {PRECISIONS}")
    device = torch.device(device)
    kind = device.type
    if kind == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
        native_bf16 = (major, minor) >= NATIVE_BF16
        if precision == "bf16" and not native_bf16:
            raise ValueError(f"precision='bf16' but {where} has no native bfloat16 (only emulated, slowly); "
                             f"use 'fp16', 'fp32' or 'auto'")
        if precision == "auto":
            precision = "bf16" if native_bf16 else "fp16" if (major, minor) >= TENSOR_CORES else "fp32"
            why = {"bf16": "native bfloat16 tensor cores",
                   "fp16": "before 8.0 tensor cores multiply float16, bfloat16 would be emulated",
                   "fp32": "no tensor cores before 7.0"}[precision]
        else:
            why = "as asked"
        triton = (major, minor) >= TRITON_SUPPORTED and triton_available()
        compile_ok = triton
        if triton:
            compile_note = "torch.compile on"
        elif (major, minor) >= TRITON_SUPPORTED:
            compile_note = "torch.compile off: triton is not installed"
        else:
            compile_note = "torch.compile off: Triton supports compute capability 8.0+"
    elif kind in ("cpu", "mps"):
        where = "the CPU" if kind == "cpu" else "Apple MPS"
        if precision == "auto":
            precision = "fp32"
            why = "the reference path" if kind == "cpu" else "no loss scaling or compiler needed"
        else:
            why = "as asked"
        if precision == "bf16" and not bf16_supported(device):
            raise ValueError(f"precision='bf16' but {where} has no bfloat16; use 'fp32' or 'auto'")
        triton = False
        compile_ok = kind == "cpu"
        compile_note = "torch.compile through inductor's C++ backend" if compile_ok else \
            "torch.compile off: not tested on MPS"
    else:
        raise ValueError(f"device={str(device)!r}: expected a cpu, cuda or mps device")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    if kind == "mps":
        fused_loss, loss_note = False, "plain loss: the fused loss is not tested on MPS"
    elif dtype is torch.float16:
        fused_loss, loss_note = False, FUSED_LOSS_FP16
    else:
        fused_loss = True
        loss_note = "fused loss with its Triton kernel" if triton else "fused loss with its torch expression"
    name = {"bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler", "fp32": "float32"}[precision]
    return PrecisionPlan(device=kind, dtype=dtype, grad_scaler=dtype is torch.float16, compile=compile_ok,
                         fused_loss=fused_loss, triton=triton and fused_loss,
                         reason=f"{name} on {where} ({why}); {compile_note}; {loss_note}")


def report(device: str = "auto") -> dict:
    """A dictionary describing this machine for the book: software, device, precision, data source."""
    dev = pick_device(device)
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu cores": os.cpu_count(),
        "device": dev.type,
        "gpu": None,
        "gpu memory (GiB)": None,
        "bf16": bf16_supported(dev),
        "in colab": "google.colab" in sys.modules,
        "hugging face hub": "online" if online("huggingface.co") else "offline",
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu memory (GiB)"] = round(props.total_memory / 2**30, 1)
    info["TinyStories source"] = stories_source()
    return info


def format_report(info: dict) -> str:
    """The report as aligned `key: value` lines."""
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}} : {'-' if v is None else v}" for k, v in info.items())
