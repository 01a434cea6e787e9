"""Precision chosen by what the device really does, and the fp16 + GradScaler training path.

GPUs are faked by patching torch.cuda's capability and name functions: the choice is a function of
those, so every GPU of the book's table can be checked on a CPU. The fp16 path itself runs for real
on the CPU (torch autocasts to float16 there too, and torch.amp.GradScaler("cpu") scales the loss).
"""

from __future__ import annotations

import json

import pytest
import torch

from slmbook import env
from slmbook.config import QwenConfig
from slmbook.data import load_stories
from slmbook.dataloader import write_token_file
from slmbook.env import PRECISIONS, bf16_supported, precision_plan
from slmbook.fused_loss import FusedLossModel
from slmbook.tokenizer import CharTokenizer
from slmbook.training import Trainer, autocast_dtype
from slmbook.training_config import TrainConfig

GPUS = {  # name as torch reports it, compute capability
    "T4": ("Tesla T4", (7, 5)),
    "V100": ("Tesla V100-SXM2-16GB", (7, 0)),
    "P100": ("Tesla P100-PCIE-16GB", (6, 0)),
    "A100": ("NVIDIA A100-SXM4-40GB", (8, 0)),
    "L4": ("NVIDIA L4", (8, 9)),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0)),
    "H200": ("NVIDIA H200", (9, 0)),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu('T4'): torch.cuda reports that GPU; is_bf16_supported says True as it does on a real T4
    (emulation), so a plan that trusted it would pick bf16."""
    def install(key, triton=True):
        name, capability = GPUS[key]
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(env, "triton_available", lambda: triton)
        return torch.device("cuda")
    return install


@pytest.mark.parametrize("gpu", ["T4", "V100"])
def test_volta_and_turing_get_fp16_with_a_grad_scaler_and_no_triton(fake_gpu, gpu):
    plan = precision_plan(fake_gpu(gpu))
    assert (plan.dtype, plan.grad_scaler, plan.precision) == (torch.float16, True, "fp16")
    assert not plan.compile and not plan.triton and not plan.fused_loss
    name, (major, minor) = GPUS[gpu]
    assert f"{name} (compute capability {major}.{minor})" in plan.reason
    assert "Triton supports compute capability 8.0+" in plan.reason and "GradScaler" in plan.reason
    assert not bf16_supported(torch.device("cuda"))  # emulated bf16 is not bf16


@pytest.mark.parametrize("gpu", ["A100", "L4", "H100", "H200"])
def test_ampere_and_later_get_native_bf16_compile_and_the_triton_loss(fake_gpu, gpu):
    plan = precision_plan(fake_gpu(gpu))
    assert (plan.dtype, plan.grad_scaler, plan.precision) == (torch.bfloat16, False, "bf16")
    assert plan.compile and plan.fused_loss and plan.triton
    assert "native bfloat16" in plan.reason and "Triton kernel" in plan.reason
    assert bf16_supported(torch.device("cuda"))


def test_a_gpu_without_tensor_cores_trains_in_float32(fake_gpu):
    plan = precision_plan(fake_gpu("P100"))
    assert plan.dtype is None and not plan.grad_scaler and not plan.compile
    assert plan.fused_loss and not plan.triton  # the fused loss in float32, with its torch expression
    assert "no tensor cores" in plan.reason


def test_forcing_bf16_where_it_is_only_emulated_is_refused(fake_gpu):
    with pytest.raises(ValueError, match=r"precision='bf16' but Tesla T4 \(compute capability 7.5\) has no native "
                                         r"bfloat16.*'fp16'"):
        precision_plan(fake_gpu("T4"), "bf16")


def test_forced_fp16_on_a_new_gpu_keeps_compile_but_takes_the_plain_loss(fake_gpu):
    """What the lead's forced run on an H200 exercises: fp16 + GradScaler, compiled, model's own loss."""
    plan = precision_plan(fake_gpu("H200"), "fp16")
    assert (plan.dtype, plan.grad_scaler, plan.compile, plan.fused_loss, plan.triton) == \
        (torch.float16, True, True, False, False)
    assert "as asked" in plan.reason and "underflows" in plan.reason


def test_forced_fp32_on_a_t4_uses_the_fused_loss_without_triton(fake_gpu):
    plan = precision_plan(fake_gpu("T4"), "fp32")
    assert plan.dtype is None and plan.fused_loss and not plan.triton and not plan.compile


def test_without_triton_installed_compile_and_the_kernel_are_off(fake_gpu):
    plan = precision_plan(fake_gpu("H100", triton=False))
    assert plan.dtype is torch.bfloat16 and not plan.compile and not plan.triton and plan.fused_loss
    assert "triton is not installed" in plan.reason


def test_cpu_trains_in_float32_with_the_fused_losss_torch_expression():
    plan = precision_plan("cpu")
    assert (plan.dtype, plan.grad_scaler, plan.compile, plan.fused_loss, plan.triton) == (None, False, True, True, False)
    forced = precision_plan("cpu", "fp16")
    assert forced.dtype is torch.float16 and forced.grad_scaler and not forced.fused_loss


def test_apple_mps_trains_in_float32_without_compile_or_the_fused_loss():
    plan = precision_plan(torch.device("mps"))  # a device object needs no Mac; the choice needs no probe
    assert (plan.dtype, plan.grad_scaler, plan.compile, plan.fused_loss, plan.triton) == \
        (None, False, False, False, False)
    assert "Apple MPS" in plan.reason


def test_unknown_precision_is_refused_naming_the_allowed_ones():
    assert PRECISIONS == ("auto", "bf16", "fp16", "fp32")
    with pytest.raises(ValueError, match=r"precision='fp8' is unknown; allowed: \('auto', 'bf16', 'fp16', 'fp32'\)"):
        precision_plan("cpu", "fp8")
    assert TrainConfig(precision="fp16").precision == "fp16"
    assert autocast_dtype(TrainConfig(precision="fp16"), torch.device("cpu")) is torch.float16


# --- the Trainer follows the plan --------------------------------------------------------------------

SMALL = QwenConfig(vocab_size=128, context_length=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)
RUN = TrainConfig(model=SMALL, steps=30, batch_size=8, context=16, lr=3e-3, warmup_steps=3, log_interval=1,
                  eval_interval=0, eval_batches=2, sample_tokens=0, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real stories as character-level token files (train: 150 stories, validation: 30)."""
    stories = load_stories("validation", source="sample", verbose=False)[:180]
    tokenizer = CharTokenizer.train(stories)
    folder = tmp_path_factory.mktemp("chars")
    write_token_file(stories[:150], tokenizer, folder / "train.bin", progress=False)
    write_token_file(stories[150:], tokenizer, folder / "validation.bin", progress=False)
    return folder / "train.bin", folder / "validation.bin"


def test_switches_the_plan_turns_off_are_named_in_one_line_and_not_used(data, monkeypatch, capsys):
    import slmbook.training as training

    t4_like = env.PrecisionPlan(device="cpu", dtype=None, grad_scaler=False, compile=False, fused_loss=False,
                                triton=False, reason="REASON")
    monkeypatch.setattr(training, "precision_plan", lambda device, precision: t4_like)
    t = Trainer(RUN.replace(compile=True, loss_chunk=64), *data, progress=False)
    assert capsys.readouterr().out.strip().splitlines() == ["loss_chunk=64 and compile=True not used here: REASON"]
    assert t.forward is t.model  # neither compiled nor wrapped in the fused loss
    monkeypatch.undo()
    t = Trainer(RUN.replace(loss_chunk=64), *data, progress=False)  # the real CPU plan keeps the fused loss
    assert isinstance(t.forward, FusedLossModel) and t.forward.kernel == "torch"
    assert capsys.readouterr().out == ""


def test_fp16_with_a_grad_scaler_trains_and_tracks_float32(data):
    fp32 = Trainer(RUN.replace(precision="fp32"), *data, progress=False)
    fp16 = Trainer(RUN.replace(precision="fp16"), *data, progress=False)
    assert fp32.scaler is None and isinstance(fp16.scaler, torch.amp.GradScaler) and fp16.scaler.is_enabled()
    a, b = fp32.run(), fp16.run()
    la, lb = [r["loss"] for r in a.train], [r["loss"] for r in b.train]
    assert lb[-1] < lb[0] - 1.0  # it learns: about 4.8 nats at the start
    assert lb == pytest.approx(la, abs=0.01)  # and follows float32 step by step (0.0014 nats at most, measured)
    assert lb != la  # float16 really ran
    assert all(r["grad_scale"] > 1 for r in b.train)  # the loss was scaled up
    assert "grad_scale" not in a.train[0]
    assert fp16.evaluate()["val_loss"] == pytest.approx(fp32.evaluate()["val_loss"], abs=0.01)


# A scaler that overflows float16 at once and doubles after every good step: the scale moves at every
# step and some steps are skipped, so a resume that lost the scaler's state would take other steps.
RESTLESS = {"scale": 2.0**24, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 1, "_growth_tracker": 0}


def test_the_grad_scaler_state_is_saved_and_a_resumed_run_gives_identical_losses(tmp_path, data):
    run = RUN.replace(steps=8, precision="fp16", eval_interval=4)
    whole = Trainer(run, *data, out=tmp_path / "whole", progress=False)
    whole.scaler.load_state_dict(RESTLESS)
    expected = whole.run()
    scales = [r["grad_scale"] for r in expected.train]
    assert len(set(scales)) > 2 and min(scales) < RESTLESS["scale"]  # overflows happened, the scale moved

    first = Trainer(run, *data, out=tmp_path / "split", progress=False)
    first.scaler.load_state_dict(RESTLESS)
    first.run(4)
    first.save(tmp_path / "split")
    first.save(tmp_path / "control")  # the same step-4 checkpoint, for the control below
    stored = json.loads((tmp_path / "split" / "training_state.json").read_text())["grad_scaler"]
    assert stored == first.scaler.state_dict() and stored["scale"] == scales[3]

    second = Trainer(run, *data, out=tmp_path / "split", resume=True, progress=False)
    assert second.step == 4 and second.scaler.state_dict() == stored
    got = second.run()
    assert [r["loss"] for r in got.train] == [r["loss"] for r in expected.train]  # bit for bit
    assert [r["grad_scale"] for r in got.train] == scales
    assert [r["val_loss"] for r in got.eval] == [r["val_loss"] for r in expected.eval]

    control = Trainer(run, *data, out=tmp_path / "control", resume=True, progress=False)
    assert control.step == 4
    control.scaler = torch.amp.GradScaler("cpu")  # what a checkpoint without the scaler's state would give
    lost = control.run()
    assert [r["loss"] for r in lost.train][5:] != [r["loss"] for r in expected.train][5:]
