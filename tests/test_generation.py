"""Generation: greedy tokens equal transformers' generate, cache and no cache agree, samplers match
transformers' logits warpers."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from slmbook.config import QwenConfig
from slmbook.generation import generate, sample_next_token, top_k_filter, top_p_filter
from slmbook.hf_interop import from_transformers, hf_config_kwargs
from slmbook.qwen import QwenModel

CONFIG = QwenConfig(vocab_size=101, context_length=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    hidden_dim=64, rope_theta=10_000.0)


def _model(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    model = QwenModel(config)
    model.init_weights(std=0.3)  # large weights: peaked, varied distributions
    return model.eval()


def _prompt(batch=2, length=5, seed=1):
    return torch.randint(0, CONFIG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_greedy_tokens_equal_transformers_generate():
    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(Qwen3Config(**hf_config_kwargs(CONFIG), attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    ours = from_transformers(hf)
    prompt = _prompt()
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None,
                           attention_mask=torch.ones_like(prompt))
    assert torch.equal(generate(ours, prompt, 20), expected)
    assert torch.equal(ours.generate(prompt, 20, use_cache=False), expected)


@pytest.mark.parametrize("sampling", [
    dict(temperature=0.0),
    dict(temperature=0.9, seed=5),
    dict(temperature=1.3, top_k=10, seed=6),
    dict(temperature=0.8, top_p=0.9, seed=7),
])
def test_cached_and_uncached_generation_give_identical_tokens(sampling):
    model = _model()
    prompt = _prompt()
    no_cache = generate(model, prompt, 30, use_cache=False, **sampling)
    assert no_cache.shape == (2, 35)
    assert torch.equal(generate(model, prompt, 30, **sampling), no_cache)
    assert torch.equal(generate(model, prompt, 30, cache="growing", **sampling), no_cache)
    assert torch.equal(generate(model, prompt, 30, cache="static", **sampling), no_cache)


def test_seed_makes_sampling_repeatable():
    model = _model()
    prompt = _prompt(batch=1, length=3)[0]
    a = generate(model, prompt, 25, temperature=1.0, seed=11)
    assert a.ndim == 1 and a.shape[0] == 28
    assert torch.equal(a, generate(model, prompt, 25, temperature=1.0, seed=11))
    assert not torch.equal(a, generate(model, prompt, 25, temperature=1.0, seed=12))
    assert torch.equal(a[:3], prompt)
    assert torch.equal(generate(model, prompt.tolist(), 25, temperature=1.0, seed=11), a)


def test_stop_token_ends_generation():
    model = _model()
    prompt = _prompt(batch=1)
    free = generate(model, prompt, 30)
    stop = free[0, 5 + 4].item()  # the 5th generated token
    first = (free[0, 5:] == stop).nonzero()[0].item()
    stopped = generate(model, prompt, 30, stop_token=stop)
    assert stopped.shape[1] == 5 + first + 1
    assert torch.equal(stopped, free[:, : 5 + first + 1])


def test_stopped_rows_repeat_the_stop_token():
    model = _model()
    prompt = _prompt(batch=2)
    free = generate(model, prompt, 20)
    stop = free[0, 6].item()
    stopped = generate(model, prompt, 20, stop_token=stop)
    row0 = stopped[0, 5:]
    hit = (row0 == stop).nonzero()[0].item()
    assert torch.all(row0[hit:] == stop)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_top_k_filter_matches_transformers(k):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(k))
    expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
    torch.testing.assert_close(top_k_filter(logits, k), expected)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_filter_matches_transformers(p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(int(p * 1000))) * 2
    expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
    torch.testing.assert_close(top_p_filter(logits, p), expected)


def test_temperature_sampling_follows_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    draws = sample_next_token(logits.expand(n, 4), temperature=2.0, generator=generator)
    frequencies = torch.bincount(draws, minlength=4).double() / n
    expected = torch.softmax(logits[0].double() / 2.0, dim=0)
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    top1 = sample_next_token(logits.expand(100, 4), temperature=5.0, top_k=1, generator=generator)
    assert torch.all(top1 == 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(top_k=0), "top_k=0"),
    (dict(top_k=500), "top_k=500"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(stop_token=101), "stop_token=101"),
    (dict(cache="paged"), "cache='paged'"),
    (dict(seed="x"), "seed='x'"),
    (dict(max_new_tokens=-1), "max_new_tokens=-1"),
    (dict(max_new_tokens=60), "context_length=64"),
])
def test_bad_generation_arguments(kwargs, match):
    model = _model()
    args = dict(max_new_tokens=5) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(model, _prompt(), **args)


def test_bad_prompts():
    model = _model()
    with pytest.raises(ValueError, match="context_length=64"):
        generate(model, torch.zeros(1, 65, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="integer tensor"):
        generate(model, torch.zeros(1, 3), 3)
    with pytest.raises(ValueError, match="shape"):
        generate(model, torch.zeros(1, 1, 3, dtype=torch.long), 3)


def test_benchmark_script_runs_and_reports(tmp_path, monkeypatch):
    """benchmarks/kv_cache_generation.py on the tiny model: one row per length, both paths timed,
    the hardware named, results written as markdown and json."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "kv_cache_generation.py"
    spec = importlib.util.spec_from_file_location("kv_cache_generation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    result = bench.run("tiny", "cpu", new_tokens=(4, 8), prompt_len=8)
    assert [r["new_tokens"] for r in result["rows"]] == [4, 8]
    for row in result["rows"]:
        assert row["cache_tokens_per_s"] > 0 and row["no_cache_tokens_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["no_cache_seconds"] / row["cache_seconds"])
    assert result["hardware"]["torch"] == torch.__version__ and result["hardware"]["cpu"]
    assert json.loads((tmp_path / "kv_cache_generation_cpu.json").read_text())["rows"] == result["rows"]
    table = (tmp_path / "kv_cache_generation_cpu.md").read_text()
    assert "| 8 |" in table and "speed-up" in table
    with pytest.raises(ValueError, match="config='huge'"):
        bench.run("huge")
