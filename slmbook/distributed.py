"""Beyond one GPU with PyTorch's own tools: DDP replicates the model, FSDP2 shards it (chapter 14).

`process_gpu` and `distributed_context` place a process under `torchrun` (its GPU, its rank).
DistributedDataParallel (used by `slmbook.training` under `torchrun`) keeps a full copy of the weights,
gradients and optimizer state on every GPU and all-reduces the gradients each step. When those copies
no longer fit, FSDP2's `fully_shard` splits every parameter across the processes: each keeps 1/N of the
weights and optimizer state, gathers a layer's full weights just before using it, and reduce-scatters
its gradients afterwards. Same model code, same loss; only the memory per GPU changes.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from slmbook.qwen import QwenModel, TransformerBlock


def shard_model(model: QwenModel) -> QwenModel:
    """Apply FSDP2: each transformer block is one unit (gathered when it runs), then the rest."""
    if not dist.is_initialized():
        raise RuntimeError("shard_model needs a process group: run under torchrun, or call "
                           "init_single_process_group() for a one-process demonstration")
    # imported here, not at the top: the training loop imports this module for `distributed_context`
    # on every machine, and FSDP is needed only by whoever shards
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, TransformerBlock):
            fully_shard(module)
    fully_shard(model)
    return model


def local_parameter_count(model: torch.nn.Module) -> int:
    """Parameters this process actually stores (its shards under FSDP2, everything otherwise)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel()
    return total


def init_single_process_group() -> None:
    """A gloo process group of one process on the CPU, so FSDP2 can be shown in a notebook."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)


def draw_data_parallel_step(n_gpus: int = 2):
    """A figure of one DDP step: each GPU its own rows, gradients all-reduced, the same update."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 1.6 + 1.3 * n_gpus))
    stages = ["its own rows\nof the batch", "forward +\nbackward", "local\ngradients g_i",
              "all-reduce:\ng = mean(g_1..g_N)", "AdamW step\n(same on every GPU)"]
    for gpu in range(n_gpus):
        y = (n_gpus - 1 - gpu) * 1.3
        ax.text(-0.35, y + 0.45, f"GPU {gpu}", ha="right", va="center", fontsize=10, weight="bold")
        for i, label in enumerate(stages):
            if i == 3:
                continue
            ax.add_patch(FancyBboxPatch((i * 2.1, y), 1.7, 0.9, boxstyle="round,pad=0.03",
                                        facecolor="#dbe9f6", edgecolor="#33557a"))
            ax.text(i * 2.1 + 0.85, y + 0.45, label, ha="center", va="center", fontsize=8.5)
            if i < len(stages) - 1 and i != 2:
                ax.annotate("", xy=((i + 1) * 2.1, y + 0.45), xytext=(i * 2.1 + 1.7, y + 0.45),
                            arrowprops=dict(arrowstyle="->", color="#33557a"))
    top = (n_gpus - 1) * 1.3 + 0.9
    ax.add_patch(FancyBboxPatch((3 * 2.1, 0), 1.7, top, boxstyle="round,pad=0.03",
                                facecolor="#fde2c4", edgecolor="#a0522d"))
    ax.text(3 * 2.1 + 0.85, top / 2, stages[3], ha="center", va="center", fontsize=8.5)
    for gpu in range(n_gpus):
        y = (n_gpus - 1 - gpu) * 1.3 + 0.45
        ax.annotate("", xy=(3 * 2.1, y), xytext=(2 * 2.1 + 1.7, y), arrowprops=dict(arrowstyle="<->", color="#a0522d"))
        ax.annotate("", xy=(4 * 2.1, y), xytext=(3 * 2.1 + 1.7, y), arrowprops=dict(arrowstyle="->", color="#33557a"))
    ax.set_xlim(-1.3, 5 * 2.1)
    ax.set_ylim(-0.3, top + 0.3)
    ax.axis("off")
    ax.set_title(f"One data-parallel (DDP) training step on {n_gpus} GPUs: only the gradients travel")
    return fig


def process_gpu(device: str = "auto") -> torch.device | None:
    """Under torchrun with GPUs: this process's own GPU (LOCAL_RANK), made the current device so that
    NCCL and every allocation use it; None when the run is not to use CUDA (`device` another kind)."""
    if not (torch.cuda.is_available() and device in ("auto", "cuda")):
        return None
    gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))))
    torch.cuda.set_device(gpu)
    return gpu


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
