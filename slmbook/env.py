"""Where the code runs: device choice, seeds, network reachability and an environment report.

Chapter 0 prints `report()` so a reader knows, before anything else, which device, precision and
data source the rest of the book will use on their machine.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import socket
import sys

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def online(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """True when `host` answers a TCP connection; False offline (or with HF_HUB_OFFLINE=1 set).

    Checked once per host and remembered, so an offline machine pays the check a single time
    instead of waiting for each library's own retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    return _reachable(host, port, timeout)


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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
    """Whether bfloat16 matrix products run on `device` (tried, not guessed)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        return bool((a @ a).float().sum().item() == 8.0)
    except (RuntimeError, TypeError):
        return False


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
    from slmbook.data import stories_source

    info["TinyStories source"] = stories_source()
    return info


def format_report(info: dict) -> str:
    """The report as aligned `key: value` lines."""
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}} : {'-' if v is None else v}" for k, v in info.items())
