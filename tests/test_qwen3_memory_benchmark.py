"""benchmarks/qwen3_memory.py measures what slmbook.memory estimates; on the CPU its tensor bytes are exact."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import qwen3_memory  # noqa: E402

from slmbook.config import TINY  # noqa: E402
from slmbook.qwen import QwenModel  # noqa: E402


def test_tensor_bytes_match_the_architecture_on_cpu():
    result = qwen3_memory.measure(TINY, torch.device("cpu"), prompt=12, new=3)
    # analytic: bf16 weights once (the tied embedding counted once), keys and values of every layer per token
    n_params = sum(p.numel() for p in QwenModel(TINY).parameters())  # parameters() yields a tied weight once
    per_token = 2 * TINY.n_layers * TINY.n_kv_heads * TINY.head_dim * 2
    assert result["estimate"]["kv_bytes_per_token"] == per_token
    for name, row in result["measured"].items():
        assert row["weights_bytes"] == 2 * n_params, name
        assert row["kv_bytes_per_token"] == per_token, name
        assert row["generation_peak_bytes"] is None  # no allocator statistics on a CPU
    assert result["estimate"]["weights_bytes"] == 2 * n_params
