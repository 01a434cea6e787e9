"""The training loop, checked against torch's own optimizer and loss and against analytic values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slmbook import train_cli as cli
from slmbook.config import QwenConfig
from slmbook.data import load_stories
from slmbook.dataloader import StepBatches, read_token_file, write_token_file
from slmbook.evaluation import token_byte_lengths
from slmbook.flops import training_flops_per_token
from slmbook.qwen import QwenModel
from slmbook.tokenizer import CharTokenizer, gpt2_encoding
from slmbook.training import Trainer, learning_rate, loss_at_init, overfit_one_batch, parameter_groups
from slmbook.training_config import PRESETS, TrainConfig, training_preset

SMALL = QwenConfig(vocab_size=128, context_length=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64)
RUN = TrainConfig(model=SMALL, steps=6, batch_size=4, context=16, lr=3e-3, warmup_steps=2, log_interval=1,
                  eval_interval=3, eval_batches=2, sample_tokens=0, device="cpu")


@pytest.fixture(scope="module")
def chars():
    stories = load_stories("validation", source="sample", verbose=False)[:200]
    return CharTokenizer.train(stories), stories


@pytest.fixture(scope="module")
def data(tmp_path_factory, chars):
    """Real stories as character-level token files (train: 150 stories, validation: 50)."""
    tokenizer, stories = chars
    folder = tmp_path_factory.mktemp("chars")
    write_token_file(stories[:150], tokenizer, folder / "train.bin", progress=False)
    write_token_file(stories[150:], tokenizer, folder / "validation.bin", progress=False)
    return folder / "train.bin", folder / "validation.bin"


def trainer(data, config=RUN, **kwargs):
    return Trainer(config, data[0], data[1], progress=False, **kwargs)


# --- schedule, parameter groups, optimizer ------------------------------------------------------


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    c = TrainConfig(model=SMALL, steps=101, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, context=16)
    assert learning_rate(0, c) == pytest.approx(1e-4)
    assert learning_rate(4, c) == pytest.approx(5e-4)
    assert learning_rate(9, c) == pytest.approx(1e-3)  # peak at the end of warm-up
    assert learning_rate(10, c) == pytest.approx(1e-3)
    # the cosine half-way between the end of warm-up (step 10) and the last step (100): the mean
    assert learning_rate(55, c) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(100, c) == pytest.approx(1e-4)
    # same curve as torch's CosineAnnealingLR after warm-up
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=90, eta_min=1e-4)
    for step in range(10, 101):
        assert learning_rate(step, c) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_parameter_groups_decay_matrices_only_and_count_the_tied_matrix_once():
    model = QwenModel(SMALL)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == model.num_parameters()
    assert any(p is model.embed_tokens.weight for p in decay["params"])
    norms = [m.weight for n, m in model.named_modules() if n.endswith("norm")]
    assert len(norms) == 2 * SMALL.n_layers * 2 + 1  # input/post-attention/q/k norms per layer + final
    assert {id(p) for p in norms} <= {id(p) for p in no_decay["params"]}


def test_one_step_equals_torch_adamw_on_the_full_batch(data):
    """Gradient accumulation (2 micro-batches) + clipping + AdamW groups == one plain full-batch step."""
    config = RUN.replace(grad_accum=2, grad_clip=0.5)
    t = trainer(data, config)
    x, y = t.train_data.batch(0)  # the whole batch of step 0 (one micro-batch of 4)
    reference = QwenModel(SMALL)
    reference.load_state_dict(t.model.state_dict())
    opt = torch.optim.AdamW(parameter_groups(reference, config.weight_decay), lr=learning_rate(0, config),
                            betas=(config.beta1, config.beta2), eps=config.eps)
    _, loss = reference(x, y)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    opt.step()
    out = t.train_step(measure=True)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert float(out["grad_norm"]) == pytest.approx(norm.item(), rel=1e-5)
    assert norm.item() > 0.5  # clipping was active
    for (name, a), b in zip(t.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert out["update_ratio"] > 0


def test_manual_attention_and_sdpa_train_the_same(data):
    a = trainer(data, RUN.replace(attn_impl="sdpa")).run(3)
    b = trainer(data, RUN.replace(attn_impl="manual")).run(3)
    for ra, rb in zip(a.train, b.train, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


def test_bf16_autocast_trains_close_to_float32(data):
    fp32 = trainer(data, RUN.replace(precision="fp32")).run(2)
    bf16 = trainer(data, RUN.replace(precision="bf16")).run(2)
    assert [r["loss"] for r in bf16.train] == pytest.approx([r["loss"] for r in fp32.train], abs=0.05)
    assert bf16.train[0]["loss"] != fp32.train[0]["loss"]  # bf16 really ran


# --- the batches --------------------------------------------------------------------------------


def test_batches_are_windows_of_the_file_and_targets_are_inputs_shifted(data):
    tokens, _ = read_token_file(data[0])
    batches = StepBatches(data[0], batch_size=4, context=16, seed=0)
    x, y = batches.batch(5)
    windows = batches.windows(5 * 4, 4)
    for row, w in enumerate(windows):
        chunk = torch.from_numpy(tokens[w * 16 : w * 16 + 17].astype(np.int64))
        assert torch.equal(x[row], chunk[:-1]) and torch.equal(y[row], chunk[1:])
    # one epoch visits every (whole-batch) window once
    seen = batches.windows(0, batches.per_epoch)
    assert sorted(batches.order(0).tolist()) == sorted(batches.source.windows.tolist())  # a permutation
    assert set(seen.tolist()) <= set(batches.source.windows.tolist())
    assert len(set(seen.tolist())) == batches.per_epoch


def test_processes_and_micro_batches_split_the_same_global_batch(data):
    batches = StepBatches(data[0], batch_size=8, context=16, seed=3)
    whole, _ = batches.batch(2)
    parts = [batches.batch(2, micro=m, grad_accum=2, rank=r, world_size=2)[0] for m in range(2) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)


def test_batches_cross_epochs_without_repeating_within_one(data):
    batches = StepBatches(data[0], batch_size=4, context=16, seed=0)
    steps_per_epoch = batches.per_epoch // 4
    first = batches.windows(0, 4)
    again = batches.windows(steps_per_epoch * 4, 4)
    assert not np.array_equal(first, again)  # a new order in epoch 1
    assert batches.epochs(steps_per_epoch) == pytest.approx(1.0)


# --- evaluation ---------------------------------------------------------------------------------


def test_evaluation_equals_cross_entropy_and_bits_per_byte_by_hand(data, chars):
    tokenizer, _ = chars
    t = trainer(data, RUN.replace(eval_batches=1), encoding=tokenizer)
    result = t.evaluate()
    tokens, _ = read_token_file(data[1])
    nats, count, nbytes = 0.0, 0, 0
    with torch.no_grad():
        for w in range(4):  # eval_batches=1 batch of batch_size=4 windows, in file order
            chunk = torch.from_numpy(tokens[w * 16 : w * 16 + 17].astype(np.int64))
            logits = t.model(chunk[None, :-1])
            nats += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
            count += 16
            text = "".join(tokenizer.decode([i]) for i in chunk[1:].tolist() if i != tokenizer.eot_token)
            nbytes += len(text.encode("utf-8"))
    assert result["val_loss"] == pytest.approx(nats / count, rel=1e-6)
    assert result["val_ppl"] == pytest.approx(math.exp(nats / count), rel=1e-6)
    assert result["val_bpb"] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-6)


def test_token_byte_lengths_add_up_to_the_utf8_bytes_of_the_text():
    enc = gpt2_encoding()
    text = "Once upon a time, a café served crème brûlée 🍰 to Lily."
    lengths = token_byte_lengths(enc)
    assert lengths[enc.eot_token] == 0
    assert int(lengths[enc.encode_ordinary(text)].sum()) == len(text.encode("utf-8"))


# --- logging ------------------------------------------------------------------------------------


def test_log_rows_hold_throughput_mfu_gradient_norm_and_update_ratio(data):
    t = trainer(data, RUN.replace(log_interval=3), peak_flops=1e12)
    history = t.run()
    assert [r["step"] for r in history.train] == [3, 6]
    assert [r["step"] for r in history.eval] == [3, 6]
    for row in history.train:
        assert row["tokens_per_s"] > 0 and row["grad_norm"] > 0 and 0 < row["update_ratio"] < 1
        expected = row["tokens_per_s"] * training_flops_per_token(SMALL, 16) / 1e12
        assert row["mfu"] == pytest.approx(expected)
        assert row["tokens_seen"] == row["step"] * 4 * 16
    assert history.train[-1]["loss"] < history.train[0]["loss"] + 1.0


def test_throughput_counts_training_time_only_not_evaluations_or_saves(data, tmp_path, monkeypatch):
    """A clock that only training steps advance (1 s each): every logged interval must read exactly
    tokens_per_step tokens/s, however the evaluations and checkpoints fall between the logs."""
    import slmbook.training as training

    clock = {"now": 0.0}
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock["now"])
    t = trainer(data, RUN.replace(steps=8, log_interval=4, eval_interval=2, checkpoint_interval=3), out=tmp_path)
    step = t.train_step

    def timed_step(*args, **kwargs):
        clock["now"] += 1.0
        return step(*args, **kwargs)

    monkeypatch.setattr(t, "train_step", timed_step)
    history = t.run()
    assert [r["step"] for r in history.train] == [4, 8]
    assert [r["tokens_per_s"] for r in history.train] == [RUN.tokens_per_step] * 2


def test_samples_are_logged_at_each_evaluation_with_the_tokenizer(data, chars):
    tokenizer, _ = chars
    t = trainer(data, RUN.replace(sample_tokens=10), encoding=tokenizer, prompt="Once")
    history = t.run(3)
    assert [s["step"] for s in history.samples] == [3]
    assert history.samples[0]["text"].startswith("Once")


# --- debugging aids -----------------------------------------------------------------------------


def test_loss_at_init_is_about_ln_vocab():
    torch.manual_seed(0)
    model = QwenModel(SMALL)
    x = torch.randint(0, SMALL.vocab_size, (4, 16))
    loss, expected = loss_at_init(model, x, torch.roll(x, -1, 1))
    assert expected == pytest.approx(math.log(128))
    assert abs(loss - expected) < 0.05


def test_overfit_one_batch_memorises_it():
    x = torch.randint(0, SMALL.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = overfit_one_batch(RUN, x, torch.roll(x, -1, 1), steps=40, lr=1e-2)
    assert losses[0] > 4.5 and losses[-1] < 0.5  # from ln(128) = 4.85 to memorised


def test_out_of_memory_is_re_raised_with_advice(data, monkeypatch):
    t = trainer(data)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    t.forward = oom
    with pytest.raises(torch.OutOfMemoryError) as info:
        t.train_step()
    for word in ("batch_size", "grad_accum", "context", "compile", "Tried to allocate"):
        assert word in str(info.value)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"steps": -1}, ["steps=-1", ">= 1"]),
    ({"batch_size": 6, "grad_accum": 4}, ["batch_size=6", "grad_accum=4", "[1, 2, 3, 6]"]),
    ({"context": 64}, ["context=64", "context_length=32"]),
    ({"precision": "fp8"}, ["precision='fp8'", "fp16"]),
    ({"lr": 0.0}, ["lr=0.0"]),
    ({"beta2": 1.0}, ["beta2=1.0"]),
    ({"attn_impl": "flash"}, ["attn_impl='flash'", "sdpa"]),
    ({"learning_rate": 1e-3}, ["no field", "learning_rate"]),
    ({"compile_mode": "fast"}, ["compile_mode='fast'", "max-autotune"]),
    ({"loss_chunk": -1}, ["loss_chunk=-1", ">= 0"]),
])
def test_bad_config_is_refused_naming_parameter_value_and_allowed(change, words):
    with pytest.raises(ValueError) as info:
        RUN.replace(**change)
    for word in words:
        assert word in str(info.value)


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"config='huge' is unknown; allowed: \['book', 'reader', 'reader-gpu', 'tiny'\]"):
        training_preset("huge")
    assert set(PRESETS) == {"tiny", "book", "reader", "reader-gpu"}


def test_save_best_without_validation_data_is_refused(data):
    with pytest.raises(ValueError, match="save_best=True .* pass val="):
        Trainer(RUN.replace(save_best=True), data[0], None, progress=False)


def test_data_with_a_larger_vocabulary_than_the_model_is_refused(data):
    with pytest.raises(ValueError, match="vocab_size=8"):
        trainer(data, RUN.replace(model=SMALL.replace(vocab_size=8)))


def test_cli_reports_bad_arguments_clearly(capsys):
    assert cli.main(["--config", "huge"]) == 2
    assert "config='huge' is unknown; allowed: ['book', 'reader', 'reader-gpu', 'tiny']" in capsys.readouterr().err
    assert cli.main(["--steps", "-3"]) == 2
    assert "steps=-3" in capsys.readouterr().err
    assert cli.main(["--batch-size", "6", "--grad-accum", "4"]) == 2
    assert "not divisible by grad_accum=4" in capsys.readouterr().err


def test_cli_trains_and_writes_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["--config", "tiny", "--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--context", "16",
                     "--eval-batches", "1",
                     "--sample-tokens", "4", "--device", "cpu", "--data", str(cli.sample_data(tmp_path / "data")),
                     "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert '"steps": 2' in text and (out / "model.safetensors").is_file()


class TransformersLM(torch.nn.Module):
    """transformers' Qwen3ForCausalLM behind the loop's interface (as in benchmarks/training_throughput.py)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x, y=None):
        logits = self.hf(input_ids=x, use_cache=False).logits
        return logits if y is None else (logits, F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))


def test_the_loop_trains_transformers_qwen3_exactly_like_ours(data):
    """The same weights in transformers' Qwen3ForCausalLM, through the same loop: the same losses."""
    from slmbook.env import seed_everything
    from slmbook.hf_interop import to_transformers

    ours = trainer(data).run(3)
    seed_everything(RUN.seed)  # what Trainer does before building its model: the same initial weights
    hf = to_transformers(QwenModel(SMALL), attn_implementation="sdpa").train()
    theirs = trainer(data, model=TransformersLM(hf)).run(3)
    assert [r["loss"] for r in theirs.train] == pytest.approx([r["loss"] for r in ours.train], rel=1e-5)
    assert [r["val_loss"] for r in theirs.eval] == pytest.approx([r["val_loss"] for r in ours.eval], rel=1e-5)


# --- the fused output head + loss ---------------------------------------------------------------


def test_training_with_the_fused_loss_follows_the_models_loss(data):
    plain = trainer(data).run(4)
    fused = trainer(data, RUN.replace(loss_chunk=24)).run(4)  # 64 tokens per step: 3 chunks, the last partial
    assert [r["loss"] for r in fused.train] == pytest.approx([r["loss"] for r in plain.train], rel=1e-5)
    assert [r["val_loss"] for r in fused.eval] == pytest.approx([r["val_loss"] for r in plain.eval], rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast: bf16 products, float32 softmax
        model = QwenModel(SMALL)
        x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
        from slmbook.fused_loss import FusedLossModel
        assert FusedLossModel(model, 10)(x, x)[1].item() == pytest.approx(model(x, x)[1].item(), abs=2e-2)


def test_throughput_benchmark_smoke_run_and_shape_choice(tmp_path, capsys):
    """benchmarks/training_throughput.py --smoke on one chosen shape: one row per implementation,
    the table and json written; an unknown --shape is refused with the allowed names."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "training_throughput.py"
    spec = importlib.util.spec_from_file_location("training_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stem = tmp_path / "tt"
    assert bench.main(["--smoke", "--shape", "smoke B", "--impl", "slmbook,slmbook-fused", "--steps", "2",
                       "--warmup", "1", "--out", str(stem)]) == 0
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert [(r["shape"], r["impl"]) for r in saved["rows"]] == [("smoke B", "slmbook"), ("smoke B", "slmbook-fused")]
    assert all(r["tokens_per_s"] > 0 for r in saved["rows"])
    table = stem.with_suffix(".md").read_text()
    assert "--shape 'smoke B'" in table and "| smoke B |" in table and "smoke A" not in table
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--shape", "smoke C"])
    assert "--shape: 'smoke C' is unknown" in capsys.readouterr().err


def test_steps_skip_the_id_check_but_the_model_checks_again_after_them(data, monkeypatch):
    t = trainer(data)
    seen = []
    original = QwenModel._check_ids

    def spy(self, ids, targets):
        seen.append(ids.shape)
        return original(self, ids, targets)

    monkeypatch.setattr(QwenModel, "_check_ids", spy)
    t.train_step()
    assert seen == []  # the token files were scanned at load: no per-step check (a GPU sync)
    bad = torch.full((1, 4), t.model.config.vocab_size)
    with pytest.raises(ValueError, match="vocab"):
        t.model(bad)
    assert len(seen) == 1
