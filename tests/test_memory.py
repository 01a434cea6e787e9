"""The memory estimator against what really exists: parameters of real models, the tensors autograd
saves, PyTorch's own memory tracker on the CPU, and the KV cache the model allocates."""

import gc
import weakref

import pytest
import torch

from slmbook import memory
from slmbook.config import BOOK, QWEN3_0_6B, TINY
from slmbook.kv_cache import KVCache
from slmbook.qwen import QwenModel

SMALL = TINY.replace(vocab_size=1000)


@pytest.mark.parametrize("config", [
    SMALL, SMALL.replace(tie_embeddings=False), SMALL.replace(qk_norm=False),
    SMALL.replace(n_heads=4, n_kv_heads=1, head_dim=24), BOOK,
    SMALL.replace(n_experts=4, n_experts_per_token=2, moe_hidden_dim=32),
    SMALL.replace(n_experts=8, n_experts_per_token=2, n_shared_experts=1, moe_hidden_dim=16),
])
def test_parameter_count_equals_the_model(config):
    with torch.device("meta"):
        model = QwenModel(config)
    assert memory.parameter_count(config) == model.num_parameters()
    assert memory.counted_parameters(model) == memory.parameter_counts(config)  # part by part


def test_parameter_count_equals_transformers_qwen3():
    transformers = pytest.importorskip("transformers")
    for config in (SMALL, SMALL.replace(tie_embeddings=False, n_kv_heads=1)):
        hf = transformers.Qwen3Config(
            vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
            num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim,
            tie_word_embeddings=config.tie_embeddings)
        with torch.device("meta"):
            model = transformers.Qwen3ForCausalLM(hf)
        assert memory.parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_qwen3_0_6b_has_its_published_size():
    # model card: 0.6B parameters, 0.44B of them outside the embedding
    counts = memory.parameter_counts(QWEN3_0_6B)
    assert memory.parameter_count(QWEN3_0_6B) == 596_049_920
    assert round((memory.parameter_count(QWEN3_0_6B) - counts["embedding"]) / 1e9, 2) == 0.44


MODES = {  # name: (config dtype, param_dtype, compute_dtype, autocast dtype)
    "float32": ("float32", "float32", "float32", None),
    "bfloat16": ("bfloat16", "bfloat16", "bfloat16", None),
    "autocast": ("float32", "float32", "bfloat16", torch.bfloat16),
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("config", [SMALL, SMALL.replace(qk_norm=False, n_kv_heads=4),
                                    SMALL.replace(n_heads=4, n_kv_heads=1, head_dim=24, n_layers=1)])
def test_activation_bytes_equal_what_autograd_saves(mode, attention, config):
    config_dtype, param_dtype, compute_dtype, autocast = MODES[mode]
    config = config.replace(dtype=config_dtype)
    torch.manual_seed(0)
    model = QwenModel(config, attn_impl=attention)
    ids, targets = torch.randint(0, config.vocab_size, (2, 2, 24)).unbind(0)
    measured = memory.measure_saved_tensors(model, ids, targets, autocast)
    assert measured["activations"] == memory.activation_bytes(config, 2, 24, param_dtype, compute_dtype, attention)
    copies = memory.matmul_parameter_count(config) * 2 if autocast else 0
    assert measured["autocast weight copies"] == copies


def test_measure_saved_tensors_counts_a_linear_layers_input():
    """The measuring tool itself, on the simplest case: y = x W^T saves x (and the weight, left out)."""

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 3, bias=False)

        def forward(self, x, targets):
            return self.proj(x)

    x = torch.randn(5, 8, requires_grad=True)
    assert memory.measure_saved_tensors(Linear(), x, None) == {"activations": 5 * 8 * 4, "autocast weight copies": 0}


def test_the_fused_attention_kernel_saves_no_t_by_t_matrix():
    sdpa = memory.activation_bytes(BOOK, 16, 512, attention="sdpa")
    manual = memory.activation_bytes(BOOK, 16, 512, attention="manual")
    # the manual path keeps the float32 softmax and its bf16 copy: 6 bytes per head, query and key
    assert manual - sdpa > 16 * BOOK.n_layers * BOOK.n_heads * 512 * 512 * 6 * 0.95


@pytest.mark.parametrize("config,batch,seq_len,autocast,keep_logits,fused", [
    (TINY.replace(vocab_size=5000), 2, 64, True, False, False),
    (TINY.replace(vocab_size=5000), 2, 64, True, True, True),  # chapter 14's loop on a GPU
    (TINY.replace(vocab_size=5000), 2, 64, False, False, False),
    (TINY.replace(vocab_size=3000, n_layers=3, dtype="bfloat16"), 3, 32, False, False, False),
    (TINY.replace(vocab_size=20000, dim=128, n_heads=4, n_kv_heads=2, hidden_dim=384), 1, 8, True, False, False),
    (TINY.replace(vocab_size=2000, dim=128, n_heads=4, n_kv_heads=2, hidden_dim=384, tie_embeddings=False),
     1, 8, True, False, False),
])
def test_training_peak_matches_pytorchs_memory_tracker(config, batch, seq_len, autocast, keep_logits, fused):
    torch.manual_seed(0)
    model = QwenModel(config)
    # foreach=True is CUDA's default; the CPU's default (a loop over parameters) differs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=not fused, fused=fused)
    ids, targets = torch.randint(0, config.vocab_size, (2, batch, seq_len)).unbind(0)
    measured = memory.measure_training_peak(model, ids, targets, optimizer, torch.bfloat16 if autocast else None,
                                            keep_logits=keep_logits)
    compute_dtype = "bfloat16" if autocast else config.dtype
    estimate = memory.training_memory(config, batch, seq_len, config.dtype, compute_dtype,
                                      keep_logits=keep_logits, fused_optimizer=fused)
    assert estimate.peak == pytest.approx(measured, rel=0.01)


def test_peak_moves_from_optimizer_step_to_backward_as_the_batch_grows():
    small, large = memory.training_memory(BOOK, 1, 16), memory.training_memory(BOOK, 16, 512)
    assert small.peak_phase == "end of backward"  # BOOK's tied embedding: half its parameters
    untied = memory.training_memory(BOOK.replace(tie_embeddings=False), 1, 16)
    assert untied.peak_phase == "optimizer step"
    assert large.peak_phase == "start of backward"
    assert "gradients" not in large.phases["start of backward"]
    assert large.total > large.peak  # gradients and activations never all coexist


def test_training_components_by_dtype_and_optimizer():
    p = memory.parameter_count(BOOK)
    mixed = memory.training_memory(BOOK, 4, 256)
    assert mixed.components["weights"] == mixed.components["gradients"] == 4 * p
    assert mixed.components["optimizer states"] == 8 * p  # AdamW: two float32 moments
    assert mixed.components["autocast weight copies"] == 2 * memory.matmul_parameter_count(BOOK)
    pure = memory.training_memory(BOOK, 4, 256, "bfloat16", "bfloat16", optimizer="momentum")
    assert pure.components["weights"] == 2 * p and pure.components["optimizer states"] == 2 * p
    assert pure.components["autocast weight copies"] == 0
    assert memory.training_memory(BOOK, 4, 256, optimizer="sgd").components["optimizer states"] == 0


def test_activations_grow_linearly_with_tokens():
    one = memory.activation_bytes(BOOK, 1, 256)
    assert memory.activation_bytes(BOOK, 8, 256) - memory.activation_bytes(BOOK, 4, 256) == pytest.approx(4 * (one - 4), rel=1e-9)


def test_max_batch_size_is_the_largest_that_fits():
    limit = 16 * 2**30
    b = memory.max_batch_size(BOOK, 512, limit)
    assert memory.training_memory(BOOK, b, 512).peak <= limit < memory.training_memory(BOOK, b + 1, 512).peak
    assert memory.max_batch_size(BOOK, 512, 1e6) == 0


def test_inference_memory_matches_the_kv_cache_and_weights():
    config = SMALL.replace(dtype="bfloat16")
    estimate = memory.inference_memory(config, batch=3, context=100)
    cache = KVCache.for_model(QwenModel(config), batch_size=3, max_tokens=100)
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert estimate.components["KV cache"] == allocated
    assert estimate.components["weights"] == memory.parameter_count(config) * 2
    int4 = memory.inference_memory(QWEN3_0_6B, 1, 4096, weight_dtype="int4")
    assert int4.components["weights"] == memory.parameter_count(QWEN3_0_6B) // 2
    assert memory.inference_memory(QWEN3_0_6B, 1, 10, prompt_logits=True).components["logits"] == 4 * 151936 * 10


@pytest.mark.parametrize("call,error,match", [
    (lambda: memory.training_memory(BOOK, 0, 64), ValueError, "batch=0"),
    (lambda: memory.training_memory(BOOK, 2, 1024), ValueError, "context_length=512"),
    (lambda: memory.training_memory(BOOK, 2, 64, optimizer="lion"), ValueError, "optimizer='lion'"),
    (lambda: memory.training_memory(BOOK, 2, 64, param_dtype="float64"), ValueError, "param_dtype='float64'"),
    (lambda: memory.training_memory(BOOK, 2, 64, attention="flash3"), ValueError, "attention='flash3'"),
    (lambda: memory.training_memory({"dim": 8}, 2, 64), TypeError, "QwenConfig"),
    (lambda: memory.inference_memory(BOOK, 1, 64, weight_dtype="int3"), ValueError, "weight_dtype='int3'"),
    (lambda: memory.max_batch_size(BOOK, 64, -1), ValueError, "memory_bytes=-1"),
])
def test_bad_input_is_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_format_bytes():
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(1536) == "1.50 KiB"
    assert memory.format_bytes(3 * 2**30) == "3.00 GiB"


def test_measuring_saved_tensors_releases_them(monkeypatch):
    """The storages seen while measuring must be freed afterwards: chapter 3 measured a training step
    right after this and, on a GPU, saw the leftovers as 34% more memory than the estimate."""
    refs = []
    real = torch.autograd.graph.saved_tensors_hooks

    class Spy(real):
        def __init__(self, pack, unpack):
            def spy_pack(t):
                packed = pack(t)
                refs.append(weakref.ref(packed))
                return packed
            super().__init__(spy_pack, unpack)

    monkeypatch.setattr(torch.autograd.graph, "saved_tensors_hooks", Spy)
    torch.manual_seed(0)
    model = QwenModel(TINY.replace(vocab_size=256, context_length=16))
    ids = torch.randint(0, 256, (2, 16))
    saved = memory.measure_saved_tensors(model, ids, ids)
    assert saved["activations"] > 0 and refs
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of {len(refs)} saved tensors outlived the measurement"
