"""Names of the floating-point formats a model may be stored in, and their sizes.

One place turns the config's dtype name ('float32', 'bfloat16', ...) into a `torch.dtype`, so an
unknown name fails early with the list of allowed ones.
"""

from __future__ import annotations

import torch

from slmbook.config import DTYPES

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}


def torch_dtype(value, name: str = "dtype") -> torch.dtype:
    """'bfloat16' or torch.bfloat16 -> torch.bfloat16; anything else raises, naming `name`."""
    if isinstance(value, torch.dtype):
        if value not in TORCH_DTYPES.values():
            raise ValueError(f"{name}={value!r}: unsupported dtype, allowed: {DTYPES}")
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in TORCH_DTYPES:
        return TORCH_DTYPES[value.removeprefix("torch.")]
    raise ValueError(f"{name}={value!r}: unknown dtype, allowed: {DTYPES}")


def bytes_per_element(value) -> int:
    """2 for float16/bfloat16, 4 for float32."""
    return torch.empty((), dtype=torch_dtype(value)).element_size()
