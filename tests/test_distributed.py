"""Data-parallel training: `torchrun --nproc_per_node 2` (gloo, CPU) follows the one-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slmbook import train_cli as cli

ARGS = ["--config", "tiny", "--steps", "4", "--batch-size", "4", "--context", "32", "--lr", "0.01",
        "--warmup-steps", "1", "--log-interval", "1", "--eval-interval", "2", "--eval-batches", "1",
        "--sample-tokens", "0", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("loss_chunk", [0, 48], ids=["model-loss", "fused-loss"])
def test_two_processes_give_the_loss_curve_of_one_with_the_same_global_batch(tmp_path, loss_chunk):
    """Both ways to end the forward pass: the model's own head and loss, and the fused head + loss
    (DDP must wrap the module the step calls, or its gradients are never averaged)."""
    args = [*ARGS, "--loss-chunk", str(loss_chunk)]
    data = cli.sample_data(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "slmbook.train", *args, "--data", str(data), "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=120, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"steps": 4') == 1  # only rank 0 logs the summary
    assert cli.main([*args, "--data", str(data), "--out", str(tmp_path / "one")]) == 0

    ddp = json.loads((tmp_path / "ddp" / "training_state.json").read_text())
    one = json.loads((tmp_path / "one" / "training_state.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    ddp_losses = [r["loss"] for r in ddp["history"]["train"]]
    one_losses = [r["loss"] for r in one["history"]["train"]]
    assert len(ddp_losses) == 4
    assert ddp_losses == pytest.approx(one_losses, rel=1e-5)
    assert one_losses[-1] < one_losses[0]  # it trained: the curve is not flat by accident
    assert [r["val_loss"] for r in ddp["history"]["eval"]] == pytest.approx(
        [r["val_loss"] for r in one["history"]["eval"]], rel=1e-5)
    assert not list((tmp_path / "ddp").glob(".*.tmp"))  # one writer: no leftovers of a second one
