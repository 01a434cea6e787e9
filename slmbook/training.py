"""The training loop of chapter 14: one readable loop whose speed-ups are switches, not copies.

    for step in range(steps):
        lr = warm-up then cosine(step)
        for each of grad_accum micro-batches:            # a big batch in small pieces
            with autocast(bf16):  loss = model(x, y)      # mixed precision on a GPU
            (loss / grad_accum).backward()                # float16: the loss scaled up first (GradScaler)
        clip the gradient norm; AdamW step; zero the gradients
        every log_interval steps: loss, tokens/s, MFU, gradient norm, update/weight ratio
        every eval_interval steps: held-out loss, perplexity, bits per byte, a sample story

The switches (`TrainConfig`): bf16 autocast, `torch.compile`, SDPA or manual attention, the fused
AdamW kernel, gradient accumulation and clipping, and an output head fused with the loss
(`loss_chunk`, slmbook/fused_loss.py, which never holds the full tokens x vocabulary logits). None
of them changes what is computed, only how fast and in how much memory; the plain float32 path on a
CPU is the reference. precision="auto" and the fast paths follow `slmbook.env.precision_plan`, what
the device really does: bf16 autocast where it is native (compute capability 8.0+), fp16 autocast
with a GradScaler on 7.x GPUs (T4, V100), float32 on the CPU and Apple MPS; torch.compile and the
Triton loss kernel only where Triton supports the GPU. A switch the plan turns off is named in one
printed line with the reason.

Speed rules the loop follows (they matter on a GPU, where a step takes milliseconds):
- no `.item()` or `.cpu()` inside a step: every such call waits for the GPU to finish. Losses are
  summed on the device and read once per `log_interval`.
- batches come from pinned (page-locked) CPU memory with `non_blocking=True`, so the copy to the
  GPU overlaps with compute.
- TF32 matrix products for whatever still runs in float32.
- with compile_mode="reduce-overhead" the compiled step is replayed as CUDA graphs: a small model's
  step takes milliseconds, about as long as Python needs to launch its hundreds of kernels one by one.
- tokens/s counts training time only: the clock stops (after a sync) around evaluations and saves.

Data-parallel training (`torchrun --nproc_per_node N -m slmbook.train ...`): each process holds a
full model replica wrapped in DistributedDataParallel and reads its own disjoint part of every
batch (`StepBatches`); DDP averages the gradients, so the run equals a one-process run with the same
global `batch_size`. Only rank 0 logs and writes checkpoints.

Resuming: the batch of step s is a pure function of (seed, s), and the checkpoint holds the weights,
AdamW's state and the step, so a run killed and resumed continues exactly as if never stopped
(bit for bit on a CPU; tests/test_checkpoint.py checks it).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slmbook import checkpoint
from slmbook.dataloader import StepBatches, TokenBatches
from slmbook.distributed import distributed_context, process_gpu
from slmbook.env import pick_device, precision_plan, seed_everything
from slmbook.evaluation import token_byte_lengths
from slmbook.flops import default_peak_flops, training_flops_per_token
from slmbook.fused_loss import FusedLossModel
from slmbook.hardware import synchronize
from slmbook.metrics import bits_per_byte
from slmbook.qwen import QwenModel

# The notebooks and readers import the run's definition from here, next to the loop that runs it
# (`from slmbook.training import TrainConfig, Trainer, training_preset`); it lives in training_config.py.
from slmbook.training_config import PRESETS, TrainConfig, compile_mode_for, training_preset  # noqa: F401

# --- the pieces of the loop -------------------------------------------------------------------------


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up from lr/warmup to lr, then a half cosine down to lr * min_lr_ratio at the last step.

    Warm-up: Adam's second-moment estimates are poor for the first steps, so full-size updates
    would be noisy and large; the cosine then spends most steps at a high rate and ends gently.
    """
    c = config
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    decay_steps = max(1, c.steps - 1 - c.warmup_steps)
    progress = min(1.0, (step - c.warmup_steps) / decay_steps)
    low = c.lr * c.min_lr_ratio
    return low + 0.5 * (c.lr - low) * (1 + math.cos(math.pi * progress))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's two groups: matrices (projections, embeddings) decay, vectors (norm scales) do not.

    Weight decay pulls weights toward 0 to keep them small; a norm's scale is meant to sit near 1 and
    a bias is a shift, so decaying them only fights the model. A tied matrix appears once.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() already yields a shared tensor once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """torch.optim.AdamW over `parameter_groups`, with the fused CUDA kernel when asked (or auto on CUDA):
    one kernel launch updates every parameter instead of several per tensor."""
    fused = config.fused_optimizer if config.fused_optimizer is not None else device.type == "cuda"
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2), eps=config.eps, fused=fused)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `config.precision` on `device` (torch.bfloat16 or torch.float16), None for
    plain float32: what `slmbook.env.precision_plan` decides from what the device really does."""
    return precision_plan(device, config.precision).dtype


# --- the trainer ------------------------------------------------------------------------------------


@dataclass
class History:
    """What a run logged: train rows every log_interval steps, eval rows every eval_interval."""

    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"train": self.train, "eval": self.eval, "samples": self.samples}

    @classmethod
    def from_dict(cls, values: dict) -> "History":
        return cls(list(values.get("train", [])), list(values.get("eval", [])), list(values.get("samples", [])))


OOM_ADVICE = ("out of GPU memory during a training step. Lower, in this order: batch_size per micro-batch "
              "(raise grad_accum to keep the same batch: batch_size={batch} / grad_accum={accum} = {micro} "
              "sequences at a time now), context={context} (memory grows with it, attention's part "
              "quadratically without SDPA), or turn compile={compile} on (fused kernels keep fewer "
              "activations) and keep precision='bf16'; with a large vocabulary, loss_chunk=4096 never holds "
              "the full tokens x vocabulary logits.")


class Trainer:
    """Trains a QwenModel on token files: `Trainer(config, "data/train.bin", "data/validation.bin").run()`.

    train / val: token files written by `slmbook.dataloader` (`write_token_file`, `prepare_token_files`).
    encoding: the tokenizer (for sample stories and bits per byte); optional.
    out: checkpoint folder; resume=True continues from the checkpoint there if it exists, resume=False
        replaces it at the first save (files a checkpoint does not write are kept either way).
    peak_flops: the device's peak FLOP/s for MFU; None = the published bf16/fp16/tf32 figure of a known GPU.
    model: train this module instead of a fresh QwenModel(config.model): anything that, like QwenModel,
        returns logits from `forward(x)` and (logits, loss) from `forward(x, y)`; e.g. transformers'
        Qwen3ForCausalLM in a thin wrapper, which the benchmark races through this same loop.
    """

    def __init__(self, config: TrainConfig, train: str | Path, val: str | Path | None = None, encoding=None,
                 out: str | Path | None = None, resume: bool = False, peak_flops: float | None = None,
                 progress: bool = True, prompt: str = "Once upon a time", model: torch.nn.Module | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config={config!r}: expected a slmbook.training.TrainConfig")
        self.config = config
        self.rank, self.world_size = distributed_context()
        if config.batch_size % (config.grad_accum * self.world_size):
            raise ValueError(
                f"batch_size={config.batch_size} is not divisible by grad_accum * processes = "
                f"{config.grad_accum} * {self.world_size}: every process needs the same number of whole sequences")
        self.micro_batch = config.batch_size // (config.grad_accum * self.world_size)
        gpu = process_gpu(config.device) if self.world_size > 1 else None  # torchrun: this process's GPU
        self.device = gpu if gpu is not None else pick_device(config.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # float32 products on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        # what this device really does: autocast dtype, GradScaler, and which fast paths are known to work
        self.plan = precision_plan(self.device, config.precision)
        self.amp_dtype = self.plan.dtype
        # float16: the loss is multiplied by a scale before backward, so that small gradients do not
        # flush to 0, and the step is skipped (and the scale halved) when a gradient overflows
        self.scaler = torch.amp.GradScaler(self.device.type) if self.plan.grad_scaler else None
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.encoding, self.prompt = encoding, prompt
        self.out = Path(out) if out is not None else None
        found = checkpoint.inspect_folder(self.out) if self.out is not None else None  # finishes a killed save
        if found is not None and found.kind == "file":
            raise ValueError(f"out={str(self.out)!r} is a file: checkpoints need a folder (a new one, or a run's)")
        if resume and found is not None and found.kind == "weights":
            raise checkpoint.CheckpointError(
                f"out={str(self.out)!r} holds {', '.join(found.ours)} but no {checkpoint.STATE_FILE}: there is no "
                "run to resume, and a save would overwrite them. Use another out folder, or resume=False to "
                "replace them")

        seed_everything(config.seed)  # the same initial weights in every process
        if model is None:
            model = QwenModel(config.model, attn_impl=config.attn_impl)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.train_data = StepBatches(train, config.batch_size, config.context, config.seed, self.device)
        self.val_data = None
        if val is not None:
            self.val_data = TokenBatches(val, self.micro_batch, config.context, shuffle=False, device=self.device)
        if config.save_best and val is None:
            raise ValueError("save_best=True keeps the checkpoint of the best validation loss: pass val=... "
                             "(validation data) or set save_best=False")
        for name, data in (("train", self.train_data), ("val", self.val_data)):
            if data is not None and data.info.n_vocab > config.model.vocab_size:
                raise ValueError(f"{name}={str(data.info.path)!r} was tokenized with {data.info.encoding!r} "
                                 f"({data.info.n_vocab} ids), more than the model's "
                                 f"vocab_size={config.model.vocab_size}")
        self.token_bytes = token_byte_lengths(encoding) if encoding is not None else None
        self.step = 0
        self.history = History()
        self.flops_per_token = training_flops_per_token(config.model, config.context)
        self.peak_flops = peak_flops if peak_flops is not None else default_peak_flops(self.device, self.amp_dtype)
        if resume and found is not None and found.kind == "checkpoint":
            self.load(self.out)

        self.forward = self.model  # what the step calls: the model, possibly wrapped by DDP and compile
        turned_off = [name for name, asked, ok in (("loss_chunk", config.loss_chunk, self.plan.fused_loss),
                                                   ("compile", config.compile, self.plan.compile)) if asked and not ok]
        if turned_off and self.is_main:
            print(f"{' and '.join(f'{n}={getattr(config, n)!r}' for n in turned_off)} not used here: {self.plan.reason}")
        if config.loss_chunk and self.plan.fused_loss:
            if not hasattr(self.model, "forward_hidden") or not hasattr(self.model, "lm_head"):
                raise ValueError(f"loss_chunk={config.loss_chunk} needs a model with forward_hidden() and lm_head "
                                 f"(a QwenModel); {type(self.model).__name__} has not: use loss_chunk=0")
            self.forward = FusedLossModel(self.model, config.loss_chunk, kernel="triton" if self.plan.triton else "torch")
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(  # wraps the fused-loss module too, if there is one
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile and self.plan.compile:
            mode = compile_mode_for(config.compile_mode, self.world_size)
            if mode != config.compile_mode and self.is_main:
                print(f"compile_mode={config.compile_mode!r} captures CUDA graphs, which DDP's gradient "
                      f"all-reduce cannot run inside: compiling with mode={mode!r}")
            self.forward = torch.compile(self.forward, mode=mode)

    # -- one optimizer step ------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, measure: bool = False) -> dict:
        """One optimizer step; returns device tensors (no GPU sync) and, with measure=True, the
        gradient norm and the update/weight ratio (which cost a sync and a copy of the weights)."""
        c = self.config
        lr = learning_rate(self.step, c)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        # The token files were scanned when opened, so the model's per-call id check (a GPU sync) is
        # switched off for the step and back on after it, for whoever calls the model next.
        checked = _set_id_checks(self.model, False)
        try:
            for micro in range(c.grad_accum):
                # on a GPU the batch comes from pinned memory, non-blocking: the copy overlaps compute
                x, y = self.train_data.batch(self.step, micro, c.grad_accum, self.rank, self.world_size)
                last = micro == c.grad_accum - 1
                # DDP averages gradients across processes in backward; only the last micro-batch needs to.
                accumulate = self.world_size > 1 and not last and hasattr(self.forward, "no_sync")
                sync = self.forward.no_sync() if accumulate else contextlib.nullcontext()
                with sync:
                    with self.autocast():
                        loss = self.forward(x, y)[1]  # the logits are dropped here, not held through backward
                    part = loss / c.grad_accum
                    (self.scaler.scale(part) if self.scaler is not None else part).backward()
                loss_sum += loss.detach()
            if c.grad_clip > 0 or measure:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)  # clip and measure the true gradient, not the scaled one
                max_norm = c.grad_clip if c.grad_clip > 0 else float("inf")  # inf: measure, do not clip
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            else:
                grad_norm = None
            before = [p.detach().clone() for p in self.model.parameters()] if measure else None
            if self.scaler is not None:
                self.scaler.step(self.optimizer)  # skipped if a gradient is inf/nan (then the scale halves)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(OOM_ADVICE.format(
                batch=c.batch_size, accum=c.grad_accum, micro=self.micro_batch, context=c.context,
                compile=c.compile) + f"\n(original error: {error})") from error
        finally:
            _set_id_checks(self.model, checked)
        self.step += 1
        result = {"loss": loss_sum / c.grad_accum, "lr": lr, "grad_norm": grad_norm}
        if measure:
            result["update_ratio"] = update_ratio(before, list(self.model.parameters()))
            if self.scaler is not None:
                result["grad_scale"] = self.scaler.get_scale()  # a sync, like the gradient norm's
        return result

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: int | None = None) -> dict:
        """Held-out loss (nats per token), perplexity and bits per byte on the validation windows.

        The same windows every time (the first `eval_batches` * batch_size, split across processes),
        so evaluations are comparable along the run.
        """
        if self.val_data is None:
            raise ValueError("evaluate() needs validation data: pass val=... to Trainer(...)")
        batches = self.config.eval_batches if batches is None else batches
        windows = len(self.val_data.windows)
        total = windows if batches == 0 else min(windows, batches * self.config.batch_size)
        self.model.eval()
        total_dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        nats = torch.zeros((), dtype=total_dtype, device=self.device)
        count = torch.zeros((), dtype=total_dtype, device=self.device)
        nbytes = torch.zeros((), dtype=total_dtype, device=self.device)
        token_bytes = self.token_bytes.to(self.device) if self.token_bytes is not None else None
        size = max(1, self.micro_batch)
        for start in range(self.rank * size, total, size * self.world_size):
            x, y = self.val_data.batch(np.arange(start, min(start + size, total)))
            with self.autocast():
                logits = self.model(x)
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
            nats += losses.to(total_dtype).sum()
            count += y.numel()
            if token_bytes is not None:
                nbytes += token_bytes[y].to(total_dtype).sum()
        self.model.train()
        if self.world_size > 1:
            import torch.distributed as dist

            for value in (nats, count, nbytes):
                dist.all_reduce(value)
        loss = (nats / count).item()
        result = {"step": self.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}
        if token_bytes is not None:
            result["val_bpb"] = bits_per_byte(nats.item(), int(nbytes.item()))
        return result

    @torch.no_grad()
    def sample(self, max_new_tokens: int | None = None, temperature: float = 0.8, top_k: int | None = 50,
               seed: int = 0, prompt: str | None = None) -> str:
        """A story continued from `prompt` (default: the trainer's) by the model as it is now (seeded:
        repeatable)."""
        from slmbook.generation import generate

        if self.encoding is None:
            raise ValueError("sample() needs the tokenizer: pass encoding=... to Trainer(...)")
        n = self.config.sample_tokens if max_new_tokens is None else max_new_tokens
        ids = self.encoding.encode_ordinary(self.prompt if prompt is None else prompt)
        n = min(n, self.config.model.context_length - len(ids))
        self.model.eval()
        with self.autocast():
            out = generate(self.model, ids, n, temperature=temperature, top_k=top_k, seed=seed,
                           stop_token=getattr(self.encoding, "eot_token", None))
        self.model.train()
        return self.encoding.decode([t for t in out.tolist() if t != getattr(self.encoding, "eot_token", -1)])

    # -- the loop --------------------------------------------------------------------------------
    def run(self, steps: int | None = None) -> History:
        """Train until step `steps` (default: config.steps), logging, evaluating and saving on the way."""
        from tqdm.auto import tqdm

        c = self.config
        end = c.steps if steps is None else steps
        if not isinstance(end, int) or isinstance(end, bool) or not 0 <= end <= c.steps:
            raise ValueError(f"steps={steps!r}: must be an integer in [0, config.steps={c.steps}]")
        # At most one refresh a second: in a notebook each refresh is a message to the front end, and a
        # long run's thousands of them can overflow the kernel's message queue (nbval then loses the end).
        bar = tqdm(total=end, initial=self.step, desc="training", disable=not self.progress, mininterval=1.0)
        self.model.train()
        last_time, last_step = time.perf_counter(), self.step
        train_seconds = 0.0  # training time of the current log interval, evaluations and saves left out
        running = torch.zeros((), device=self.device)
        while self.step < end:
            log = (self.step + 1) % c.log_interval == 0 or self.step + 1 == end
            out = self.train_step(measure=log)
            running += out["loss"]
            if log:
                steps_done = self.step - last_step
                if self.world_size > 1:
                    import torch.distributed as dist

                    dist.all_reduce(running)  # sum over processes (gloo has no average)
                loss = running.item() / (steps_done * self.world_size)  # the one sync of the interval
                train_seconds += time.perf_counter() - last_time
                tokens_per_s = steps_done * c.tokens_per_step / train_seconds
                row = {
                    "step": self.step, "loss": loss, "lr": out["lr"], "grad_norm": float(out["grad_norm"]),
                    "update_ratio": out["update_ratio"], "tokens_per_s": tokens_per_s,
                    "mfu": tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else None,
                    "tokens_seen": self.step * c.tokens_per_step,
                    "epochs": self.train_data.epochs(self.step),
                }
                if "grad_scale" in out:  # float16: the loss scale (it halves at each skipped step)
                    row["grad_scale"] = out["grad_scale"]
                self.history.train.append(row)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{out['lr']:.1e}", refresh=False)
                running.zero_()
                train_seconds, last_time, last_step = 0.0, time.perf_counter(), self.step
            evaluate = self.val_data is not None and (
                self.step == end or c.eval_interval and self.step % c.eval_interval == 0)
            periodic = self.out is not None and not c.save_best and c.checkpoint_interval
            save = periodic and self.step % c.checkpoint_interval == 0
            if evaluate or save:  # not training throughput: close the interval's clock around them
                synchronize(self.device)  # the queued training steps finish first and count as training
                train_seconds += time.perf_counter() - last_time
                if evaluate:
                    self.log_evaluation()
                if save:
                    self.save(self.out)
                last_time = time.perf_counter()
            bar.update(1)
        bar.close()
        saved_last = c.checkpoint_interval and self.step % c.checkpoint_interval == 0
        if self.out is not None and not c.save_best and not saved_last:
            self.save(self.out)
        return self.history

    def log_evaluation(self) -> dict:
        """Evaluate, log a sample story, and with save_best keep the checkpoint of the best model so far
        (on a small data set the validation loss turns up once the model starts to memorise it)."""
        best = min((r["val_loss"] for r in self.history.eval), default=math.inf)
        row = self.evaluate()
        self.history.eval.append(row)
        if self.encoding is not None and self.config.sample_tokens and self.is_main:
            self.history.samples.append({"step": self.step, "text": self.sample()})
        if self.config.save_best and self.out is not None and row["val_loss"] < best:
            self.save(self.out)
        return row

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path | None:
        """Write a checkpoint (rank 0 only; other processes wait for it)."""
        path = None
        if self.is_main:
            eos = getattr(self.encoding, "eot_token", None)
            path = checkpoint.save_checkpoint(
                folder, self.model, self.optimizer, self.step, self.config.to_dict(),
                extra={"history": self.history.to_dict(), "world_size": self.world_size,
                       "tokenizer": getattr(self.encoding, "name", None),
                       **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {})},
                eos_token_id=eos)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return path

    def load(self, folder: str | Path) -> None:
        """Continue from a checkpoint: weights, AdamW state, step and history."""
        state = checkpoint.read_state(folder)
        stored = TrainConfig.from_dict(state["train_config"]) if state.get("train_config") else None
        if stored is not None:
            ours = self.config.to_dict()
            differ = {k for k, v in stored.to_dict().items() if k not in RESUMABLE_CHANGES and ours[k] != v}
            if differ:
                raise checkpoint.CheckpointError(
                    f"checkpoint {str(folder)!r} belongs to another run: "
                    + ", ".join(f"{k}={getattr(stored, k)!r} there but {getattr(self.config, k)!r} here"
                                for k in sorted(differ))
                    + f". Use another --out folder, or the same settings (allowed to change: "
                      f"{sorted(RESUMABLE_CHANGES)})")
        checkpoint.load_weights(self.model, folder, state)
        checkpoint.load_optimizer(self.optimizer, folder, state)
        if self.scaler is not None and "grad_scaler" in state:  # float16: the loss scale and its growth counter
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = state["step"]
        self.history = History.from_dict(state.get("history", {}))


# Settings that change how fast a run goes or what it logs, not what it computes: a resumed run may
# change them (resume on another device, with compile on). Everything else (steps included: the
# learning-rate schedule depends on it) must match the checkpoint.
RESUMABLE_CHANGES = {"device", "compile", "compile_mode", "fused_optimizer", "attn_impl", "loss_chunk", "log_interval",
                     "eval_interval", "eval_batches", "checkpoint_interval", "sample_tokens", "save_best"}


def _set_id_checks(model: torch.nn.Module, on: bool) -> bool:
    """Switch the token-id check of every QwenModel inside `model` (compiled, DDP or fused-loss
    wrappers included) on or off; returns the previous setting."""
    models = [m for m in model.modules() if isinstance(m, QwenModel)]
    before = all(m.check_ids for m in models)
    for m in models:
        m.check_ids = on
    return before


def update_ratio(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """||new - old|| / ||old|| over all weights: how big a step was relative to the weights.

    Around 1e-3 is healthy; much larger means the learning rate is too high (the weights are being
    rewritten, not refined), much smaller that the model is barely moving.
    """
    diff = torch.sqrt(sum(((a.detach().float() - b.float()) ** 2).sum() for a, b in zip(after, before, strict=True)))
    norm = torch.sqrt(sum((b.float() ** 2).sum() for b in before))
    return float(diff / norm)


# --- debugging aids ---------------------------------------------------------------------------------


def loss_at_init(model: QwenModel, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(loss of the untrained model, ln(vocab_size)).

    A freshly initialised model should be unsure of everything: nearly uniform over the vocabulary,
    so its loss is about ln(V) (10.8 nats for GPT-2's 50,257 tokens). Much higher means the initial
    logits are too large (a bad init scale): the first steps are then spent undoing it.
    """
    model.eval()
    with torch.no_grad():
        _, loss = model(tokens, targets)
    model.train()
    return loss.item(), math.log(model.config.vocab_size)


def overfit_one_batch(config: TrainConfig, tokens: torch.Tensor, targets: torch.Tensor, steps: int = 100,
                      lr: float = 3e-3) -> list[float]:
    """Train on one batch again and again; the loss must go to near 0.

    The first check of any new model or loop: if it cannot memorise 8 sequences, something is
    broken (targets not shifted, gradients not flowing, a frozen layer), and no amount of data helps.
    """
    seed_everything(config.seed)
    model = QwenModel(config.model, attn_impl=config.attn_impl)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        _, loss = model(tokens, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses
