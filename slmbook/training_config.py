"""What defines a training run (chapter 14): `TrainConfig`, checked on creation, and the named presets.

A run is a frozen value: the model's shape, the batch, the schedule, the precision and the fast paths.
Every field is checked when the config is made (a wrong value fails here, naming the field and what is
allowed, not steps later inside the loop), and a checkpoint stores the config so that a resumed run can
be compared with the one that wrote it (`slmbook.training.RESUMABLE_CHANGES`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from slmbook.attention import ATTN_IMPLS
from slmbook.config import BOOK, READER, READER_GPU, TINY, QwenConfig, refuse_unknown_fields
from slmbook.env import DEVICES, PRECISIONS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the model's shape included). Checked on creation."""

    model: QwenConfig = TINY
    steps: int = 200  # optimizer steps
    batch_size: int = 8  # sequences per optimizer step, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per step (per process): batch_size / (grad_accum * processes) each
    context: int = 128  # tokens per training sequence (<= model.context_length)
    lr: float = 3e-3  # peak learning rate, reached after warm-up
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1  # on matrices only (see `parameter_groups`)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    precision: str = "auto"  # "bf16" or "fp16" autocast, "fp32", or "auto" = slmbook.env.precision_plan's choice
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # torch.compile's mode: "default", "max-autotune-no-cudagraphs", ...
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "manual" (the formula, chapter 8)
    loss_chunk: int = 0  # 0: the model's own head and loss; n > 0: `fused_linear_cross_entropy`, n tokens at a time
    fused_optimizer: bool | None = None  # AdamW's fused kernel; None = on for CUDA
    device: str = "auto"
    seed: int = 0
    log_interval: int = 10  # steps between train-loss logs (each costs one GPU sync)
    eval_interval: int = 50  # steps between evaluations (0 = only at the end)
    eval_batches: int = 8  # held-out batches of `batch_size` sequences per evaluation (0 = all)
    checkpoint_interval: int = 0  # steps between checkpoints (0 = only at the end)
    save_best: bool = False  # checkpoint only after an evaluation that beats the best validation loss
    sample_tokens: int = 48  # length of the sample story generated at each evaluation (0 = none)

    def __post_init__(self) -> None:
        if not isinstance(self.model, QwenConfig):
            raise TypeError(f"TrainConfig.model={self.model!r}: expected a slmbook.config.QwenConfig")
        for name in ("steps", "batch_size", "grad_accum", "context"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_batches", "checkpoint_interval", "sample_tokens", "eval_interval", "seed",
                     "loss_chunk"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("log_interval", self.log_interval, minimum=1)
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps} exceeds steps={self.steps}: the learning "
                             f"rate would never reach its peak lr={self.lr!r}; allowed warmup_steps 0..{self.steps}")
        if self.context > self.model.context_length:
            raise ValueError(f"TrainConfig.context={self.context}: must be <= model.context_length="
                             f"{self.model.context_length}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} is not divisible by grad_accum="
                             f"{self.grad_accum}: allowed grad_accum values are "
                             f"{[d for d in range(1, self.batch_size + 1) if self.batch_size % d == 0]}")
        for name in ("lr", "eps"):
            _check_float(name, getattr(self, name), low=0.0, low_open=True)
        _check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        _check_float("grad_clip", self.grad_clip, low=0.0)
        for name in ("beta1", "beta2"):
            _check_float(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"TrainConfig.compile_mode={self.compile_mode!r} is unknown; allowed: {COMPILE_MODES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r} is unknown; allowed: {PRECISIONS}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"TrainConfig.attn_impl={self.attn_impl!r} is unknown; allowed: {ATTN_IMPLS}")
        if self.fused_optimizer not in (None, True, False):
            raise ValueError(f"TrainConfig.fused_optimizer={self.fused_optimizer!r}: allowed None (auto), True, False")
        for name in ("compile", "save_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: allowed True or False")
        _check_device(self.device)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (checked again); unknown names are refused."""
        refuse_unknown_fields(type(self), changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # the nested model config becomes a dict too

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        refuse_unknown_fields(cls, values)
        if isinstance(values.get("model"), dict):
            values["model"] = QwenConfig.from_dict(values["model"])
        return cls(**values)


def _check_device(device):
    """A device name ("auto", "cpu", "cuda", "cuda:N", "mps"). Whether it exists is checked when training
    starts (a config may be written on one machine for another)."""
    kind, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind not in DEVICES or (index and not (kind != "auto" and index.isdigit())) or device.endswith(":"):
        raise ValueError(f"TrainConfig.device={device!r} is unknown; allowed: {DEVICES} or 'cuda:N'")


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"TrainConfig.{name}={value!r}: must be an integer >= {minimum}")


def _check_float(name, value, low=None, high=None, low_open=False, high_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
        span = f"{left}{low}, {high if high is not None else 'inf'}{right}"
        raise ValueError(f"TrainConfig.{name}={value!r}: must be a finite number in {span}")


# The runs the book names; change anything with .replace().
# "tiny": the notebooks' quick mode and CI, a few minutes on a laptop CPU.
# "book": chapter 14's run on one GPU: the BOOK model, 1,000 steps of 32 x 512 tokens (16 M tokens, about
# 7 epochs of the 2.2 M deduplicated local stories; a minute or two on an H100), evaluated on all the
# validation stories every 50 steps, keeping the checkpoint of the best validation loss (on so little
# data the model starts memorising after a few epochs). Its fast path: torch.compile with CUDA graphs
# ("reduce-overhead": a small model's step is too short to launch its hundreds of kernels one by one
# from Python) and the fused output head + loss.
PRESETS = {
    "tiny": TrainConfig(),
    "book": TrainConfig(model=BOOK, steps=1000, batch_size=32, context=512, lr=1e-3, warmup_steps=50,
                        compile=True, compile_mode="reduce-overhead", loss_chunk=8192, log_interval=25,
                        eval_interval=50, eval_batches=0, save_best=True, sample_tokens=120),
    # The reader's models on the book's TinyStories tokenizer (`python -m slmbook.train --config reader`
    # tokenizes the shipped sample with it). "reader": about a minute on 2 CPU cores, bounded by steps (not
    # time), evaluated once at the end on all 1,000 validation stories; at equal compute, 4 sequences a step
    # beat 8 and 16 (more updates; benchmarks/results/reader_cpu_preset.md). "reader-gpu": the shipped
    # pretrained model, on all local stories (benchmarks/train_reader_model.py), keeping the best checkpoint.
    # On ~5 M tokens a model memorises after a few epochs; of the recipes tried, a cosine down to zero with
    # weight decay 1.0 held that off best (benchmarks/results/reader_model.md).
    "reader": TrainConfig(model=READER, steps=600, batch_size=4, context=256, lr=3e-3, warmup_steps=50,
                          log_interval=20, eval_interval=0, eval_batches=0, sample_tokens=80),
    "reader-gpu": TrainConfig(model=READER_GPU, steps=2500, batch_size=32, context=512, lr=2e-3, warmup_steps=100,
                              min_lr_ratio=0.0, weight_decay=1.0, compile=True, compile_mode="reduce-overhead",
                              log_interval=50, eval_interval=100, eval_batches=0, save_best=True, sample_tokens=120),
}
# torch.compile modes that capture CUDA graphs; DDP's gradient all-reduce hooks run between the graphs'
# pieces, so data-parallel runs use the same kernels without graphs (`compile_mode_for`).
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_mode_for(mode: str, world_size: int) -> str:
    """The torch.compile mode to use: `mode`, without CUDA graphs when several processes train (DDP)."""
    return CUDA_GRAPH_MODES.get(mode, mode) if world_size > 1 else mode


def training_preset(name: str) -> TrainConfig:
    """A named training run: 'tiny' or 'book'."""
    if name not in PRESETS:
        raise ValueError(f"config={name!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[name]
