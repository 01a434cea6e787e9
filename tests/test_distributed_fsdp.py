"""FSDP2 on CPU with gloo: two processes sharding the model train exactly like one unsharded process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slmbook.config import TINY
from slmbook.distributed import local_parameter_count, shard_model
from slmbook.qwen import QwenModel

CONFIG = TINY.replace(vocab_size=256, context_length=32)
STEPS, BATCH, SEQ = 3, 4, 16


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ + 1), generator=g) for _ in range(STEPS)]


def _train(model, batches, rank=0, world=1):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for tokens in batches:
        rows = tokens[rank::world]  # each process its own rows of the global batch
        _, loss = model(rows[:, :-1], rows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(total.item() / world)
    return losses


def _worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = QwenModel(CONFIG)
    full = sum(p.numel() for p in model.parameters())
    shard_model(model)
    losses = _train(model, _batches(), rank, world)
    queue.put((rank, losses, local_parameter_count(model), full))
    dist.destroy_process_group()


def test_fsdp2_two_processes_match_one_unsharded_process():
    torch.manual_seed(0)
    reference = _train(QwenModel(CONFIG), _batches())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _rank, losses, local, full in results:
        assert losses == pytest.approx(reference, abs=1e-5)
        assert local < full and local >= full // 2 - 64, "each process stores about half the parameters"


def test_shard_model_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group exists in this test process")
    with pytest.raises(RuntimeError, match="needs a process group"):
        shard_model(QwenModel(CONFIG))
