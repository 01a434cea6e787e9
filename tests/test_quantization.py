"""Quantization against references: torch's quantization observers and fake-quantize kernels,
bitsandbytes' own codes, hand-worked bytes, and analytic sizes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from slmbook import evaluation as ev
from slmbook import quantization as qz
from slmbook.config import QwenConfig
from slmbook.qwen import QwenModel

CONFIG = QwenConfig(vocab_size=97, context_length=32, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128)


def weight(rows=48, cols=64, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def model(seed=0):
    torch.manual_seed(seed)
    m = QwenModel(CONFIG)
    m.init_weights(std=0.1)
    return m.eval()


# --- int4 packing ---------------------------------------------------------------------------------


def test_pack_int4_puts_the_first_code_in_the_low_nibble():
    assert qz.pack_int4(torch.tensor([1, -1])).tolist() == [0xF1]
    assert qz.pack_int4(torch.tensor([3, 5, 15, 0])).tolist() == [0x53, 0x0F]
    assert qz.pack_int4(torch.tensor([-8, 7])).tolist() == [0x78]


def test_pack_unpack_round_trip_and_halve_the_bytes():
    gen = torch.Generator().manual_seed(0)
    signed = torch.randint(-8, 8, (6, 10), generator=gen)
    unsigned = torch.randint(0, 16, (6, 10), generator=gen)
    packed = qz.pack_int4(signed)
    assert packed.shape == (6, 5) and packed.dtype == torch.uint8
    assert torch.equal(qz.unpack_int4(packed, signed=True).long(), signed)
    assert torch.equal(qz.unpack_int4(qz.pack_int4(unsigned), signed=False).long(), unsigned)


def test_pack_int4_errors():
    with pytest.raises(ValueError, match="must be even"):
        qz.pack_int4(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="codes range"):
        qz.pack_int4(torch.tensor([16, 0]))
    with pytest.raises(TypeError, match="integer tensor"):
        qz.pack_int4(torch.tensor([0.5, 1.0]))


# --- quantize / dequantize against torch --------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_absmax_per_channel_equals_torch_observer_and_fake_quantize(bits):
    w = weight()
    qmin, qmax = qz.code_range(bits, "absmax")
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        quant_min=qmin, quant_max=qmax)
    observer(w)
    scale, zero = observer.calculate_qparams()
    qt = qz.quantize(w, bits, "absmax", "channel")
    assert torch.allclose(qt.scale.reshape(-1), scale, rtol=1e-6, atol=0)
    expected = torch.fake_quantize_per_channel_affine(w, scale, zero.int(), 0, qmin, qmax)
    assert torch.allclose(qt.dequantize(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_zero_point_equals_torch_observer_and_fake_quantize(bits):
    w = weight() + 0.7  # lopsided: the zero point matters
    qmin, qmax = qz.code_range(bits, "zeropoint")
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                                        quant_min=qmin, quant_max=qmax)
    observer(w)
    scale, zero = observer.calculate_qparams()
    qt = qz.quantize(w, bits, "zeropoint", "channel")
    assert torch.allclose(qt.scale.reshape(-1), scale, rtol=1e-6, atol=0)
    assert torch.equal(qt.zero_point.reshape(-1).long(), zero.long())
    expected = torch.fake_quantize_per_channel_affine(w, scale, zero.int(), 0, qmin, qmax)
    assert torch.allclose(qt.dequantize(), expected, atol=1e-6, rtol=0)


def test_per_tensor_zero_point_equals_torch_observer():
    w = weight() * 0.3 - 0.2
    observer = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
    observer(w)
    scale, zero = observer.calculate_qparams()
    qt = qz.quantize(w, 8, "zeropoint", "tensor")
    assert qt.scale.item() == pytest.approx(scale.item(), rel=1e-6)
    assert qt.zero_point.item() == zero.item()
    expected = torch.fake_quantize_per_tensor_affine(w, scale.item(), int(zero), 0, 255)
    assert torch.allclose(qt.dequantize(), expected, atol=1e-6, rtol=0)


def test_group_wise_is_per_channel_on_each_group():
    w = weight(rows=8, cols=64)
    grouped = qz.fake_quantize(w, bits=4, scheme="absmax", granularity="group", group_size=16)
    pieces = [qz.fake_quantize(w[:, i:i + 16], bits=4, scheme="absmax", granularity="channel")
              for i in range(0, 64, 16)]
    assert torch.equal(grouped, torch.cat(pieces, dim=1))
    qt = qz.quantize(w, bits=4, scheme="absmax", granularity="group", group_size=16)
    assert qt.scale.shape == (8, 4, 1)


def test_storage_sizes_are_the_analytic_ones():
    w = weight(rows=48, cols=64)  # 3,072 weights
    n, rows = w.numel(), w.shape[0]
    assert qz.quantize(w, 8, "absmax", "tensor").nbytes == n + 4
    assert qz.quantize(w, 8, "absmax", "channel").nbytes == n + 4 * rows
    assert qz.quantize(w, 8, "zeropoint", "channel").nbytes == n + 5 * rows
    assert qz.quantize(w, 4, "absmax", "channel").nbytes == n // 2 + 4 * rows
    g = qz.quantize(w, 4, "absmax", "group", group_size=32)
    assert g.nbytes == n // 2 + 4 * n // 32 and g.bits_per_weight == 4 + 32 / 32
    assert qz.quantize(w, 4, "zeropoint", "group", group_size=64).bits_per_weight == 4 + 40 / 64


def test_rounding_error_is_at_most_half_a_step():
    w = weight()
    for bits in (4, 8):
        qt = qz.quantize(w, bits, "absmax", "channel")
        assert torch.all((qt.dequantize() - w).abs() <= qt.scale.reshape(-1, 1) / 2 + 1e-7)


def test_an_outlier_ruins_its_row_at_4_bits_and_group_wise_contains_it():
    w = weight(rows=4, cols=128) * 0.02
    w[0, 5] = 1.0  # one large weight: 50 standard deviations
    row = qz.fake_quantize(w, bits=4, scheme="absmax", granularity="channel")
    grouped = qz.fake_quantize(w, bits=4, scheme="absmax", granularity="group", group_size=32)
    per_row = qz.error_stats(w[0], row[0])
    assert per_row["zeroed_fraction"] > 0.95  # step 1/7: every ordinary weight of the row rounds to 0
    assert qz.error_stats(w[0, 32:], grouped[0, 32:])["zeroed_fraction"] < 0.3  # other groups keep theirs
    assert qz.error_stats(w, grouped)["sqnr_db"] > qz.error_stats(w, row)["sqnr_db"] + 3
    # at 8 bits the same outlier costs far less: 127 steps instead of 7
    assert qz.error_stats(w[0], qz.fake_quantize(w, bits=8)[0])["zeroed_fraction"] < 0.5


def test_error_stats_against_hand_computed_values():
    original = torch.tensor([1.0, -2.0, 0.5, 0.0])
    approx = torch.tensor([1.0, -2.0, 0.0, 0.0])
    stats = qz.error_stats(original, approx)
    assert stats["mse"] == pytest.approx(0.25 / 4)
    assert stats["max_abs_error"] == 0.5
    assert stats["relative_error"] == pytest.approx(math.sqrt(0.25 / 5.25))
    assert stats["sqnr_db"] == pytest.approx(10 * math.log10(5.25 / 0.25))
    assert stats["zeroed_fraction"] == pytest.approx(1 / 3)


def test_quantize_errors_name_the_parameter():
    with pytest.raises(ValueError, match="bits=3"):
        qz.quantize(weight(), bits=3)
    with pytest.raises(ValueError, match="scheme='minmax'"):
        qz.quantize(weight(), scheme="minmax")
    with pytest.raises(ValueError, match="group_size=24 does not divide"):
        qz.quantize(weight(), bits=4, granularity="group", group_size=24)
    with pytest.raises(ValueError, match="group_size=None"):
        qz.quantize(weight(), granularity="group")
    with pytest.raises(ValueError, match="group_size=32: only used"):
        qz.quantize(weight(), granularity="channel", group_size=32)
    with pytest.raises(TypeError, match="floating-point"):
        qz.quantize(torch.ones(4, 4, dtype=torch.int64))


# --- models ---------------------------------------------------------------------------------------


def test_quantized_linear_computes_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = qz.QuantizedLinear(linear, bits=4, scheme="zeropoint", granularity="group", group_size=16)
    x = torch.randn(3, 64)
    w = torch.fake_quantize_per_channel_affine(  # torch's kernel on each group of 16
        linear.weight.detach().reshape(-1, 16), layer.scale.reshape(-1), layer.zero_point.reshape(-1).int(), 0, 0, 15)
    assert torch.allclose(layer(x), F.linear(x, w.reshape(48, 64), linear.bias), atol=1e-5)


def test_model_bytes_counts_a_tied_matrix_once():
    m = model()
    assert qz.model_bytes(m) == 4 * m.num_parameters()


def test_quantize_model_replaces_the_linear_layers_but_the_head():
    m = model()
    q = qz.quantize_model(m, bits=8, scheme="absmax", granularity="channel")
    linears = [mod for name, mod in m.named_modules() if type(mod) is torch.nn.Linear and not name.endswith("lm_head")]
    assert sum(isinstance(mod, qz.QuantizedLinear) for mod in q.modules()) == len(linears)
    assert type(q.lm_head) is torch.nn.Linear and q.lm_head.weight is q.embed_tokens.weight
    weights = sum(layer.weight.numel() for layer in linears)
    rows = sum(layer.out_features for layer in linears)
    assert qz.model_bytes(q) == qz.model_bytes(m) - 4 * weights + weights + 4 * rows
    assert qz.linear_weight_bits(q) == pytest.approx(8 + 32 * rows / weights)
    assert qz.linear_weight_bits(m) == 32
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (q(ids) - m(ids)).abs().max() < 0.05 * m(ids).abs().max()
    assert all(type(mod) is torch.nn.Linear for mod in m.modules() if isinstance(mod, torch.nn.Linear))  # a copy


# --- bitsandbytes ---------------------------------------------------------------------------------


def test_bitsandbytes_int8_codes_are_our_per_channel_absmax_of_the_fp16_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    layer = qz.bitsandbytes_linear(linear, "int8")
    assert type(layer).__name__ == "Linear8bitLt" and layer.state.threshold == 6.0
    # LLM.int8 rounds the weight to fp16 first, then round(w * 127 / max|row|)
    ours = qz.quantize(linear.weight.detach().half().float(), 8, "absmax", "channel")
    diff = layer.weight.data.int() - ours.codes.reshape(128, 256).int()
    assert diff.abs().max() <= 1 and (diff != 0).float().mean() < 1e-3  # ties rounded in fp16 arithmetic
    assert torch.allclose(layer.weight.SCB / 127, ours.scale.reshape(-1), rtol=1e-6)
    x = torch.randn(4, 256)
    with torch.no_grad():
        assert (layer(x) - linear(x)).abs().max() < 0.02


@pytest.mark.parametrize("method", ["nf4", "fp4"])
def test_bitsandbytes_4bit_layers_use_blocks_of_64(method):
    bnb = qz.import_bitsandbytes()
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=False)
    layer = qz.bitsandbytes_linear(linear, method, double_quant=False)
    state = layer.weight.quant_state
    assert type(layer).__name__ == "Linear4bit" and state.quant_type == method and state.blocksize == 64
    # every stored weight is one of the 16 levels times its block's absmax
    w = bnb.functional.dequantize_4bit(layer.weight.data, state).reshape(-1, 64)
    levels = state.code.reshape(1, 1, 16) * state.absmax.reshape(-1, 1, 1)
    assert torch.allclose((w.unsqueeze(-1) - levels).abs().min(-1).values, torch.zeros_like(w), atol=1e-6)
    n = linear.weight.numel()
    assert qz.linear_weight_bits(torch.nn.Sequential(layer)) == 4 + 32 / 64  # codes + one fp32 absmax per block
    double = qz.bitsandbytes_linear(linear, method)  # absmax in 8 bits, + one fp32 per 256 blocks
    assert qz.linear_weight_bits(torch.nn.Sequential(double)) == (n / 2 + n / 64 + 4 * math.ceil(n / 64 / 256)) * 8 / n
    if method == "nf4":  # QLoRA's NF4 table (Dettmers et al. 2023, appendix E)
        assert state.code[[0, 1, 7, 8, 15]].tolist() == pytest.approx(
            [-1.0, -0.6961928009986877, 0.0, 0.07958029955625534, 1.0])


def test_to_bitsandbytes_swaps_every_linear_but_the_head():
    m = model()
    q = qz.to_bitsandbytes(m, "nf4")
    names = {type(mod).__name__ for name, mod in q.named_modules() if name.endswith(("proj",))}
    assert names == {"Linear4bit"} and type(q.lm_head) is torch.nn.Linear
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(q(ids)).all()
    with pytest.raises(ValueError, match="method='int3'"):
        qz.to_bitsandbytes(m, "int3")
    with pytest.raises(ValueError, match="in_features=32 is not a multiple of blocksize=64"):
        qz.bitsandbytes_linear(torch.nn.Linear(32, 8), "nf4", cpu_bf16_kernel=True)


def test_portable_4bit_path_computes_with_the_dequantized_weight():
    """Without the processor-specific bfloat16 kernel, a 4-bit layer multiplies by its dequantized
    weight in float32, the same on every CPU."""
    bnb = qz.import_bitsandbytes()
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 24)  # 32 inputs: half a block per row
    layer = qz.bitsandbytes_linear(linear, "nf4").eval()
    x = torch.randn(5, 32)
    with torch.no_grad():
        w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        assert torch.allclose(layer(x), F.linear(x, w, linear.bias), atol=1e-5)


# --- the chapter's table --------------------------------------------------------------------------


def test_evaluation_batches_are_consecutive_windows():
    tokens = torch.arange(50)
    batches = ev.evaluation_batches(tokens, context=8, batch_size=4)
    x, y = batches[0]
    assert x[1].tolist() == list(range(8, 16)) and y[1].tolist() == list(range(9, 17))
    assert sum(b[0].shape[0] for b in batches) == (50 - 1) // 8
    with pytest.raises(ValueError, match="too few"):
        ev.evaluation_batches(torch.arange(5), context=8, batch_size=1)


def test_evaluate_nll_equals_the_model_loss():
    m = model()
    batches = ev.evaluation_batches(torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(1)), 16, 4)
    nll, tokens, _ = ev.evaluate_nll(m, batches)
    with torch.no_grad():
        losses = [m(x, y)[1].item() * y.numel() for x, y in batches]
    assert tokens == sum(y.numel() for _, y in batches)
    assert nll == pytest.approx(sum(losses) / tokens, rel=1e-5)


def test_compare_methods_table():
    m = model()
    batches = ev.evaluation_batches(torch.randint(0, 97, (300,), generator=torch.Generator().manual_seed(1)), 16, 8)
    methods = ["fp32", "bf16", "int8 absmax per-channel", "int4 absmax group 32", "bnb LLM.int8", "bnb nf4"]
    rows = {r["method"]: r for r in qz.compare_methods(m, batches, methods)}
    assert list(rows) == methods
    assert rows["fp32"]["bits_per_weight"] == 32
    assert rows["bf16"]["model_bytes"] == rows["fp32"]["model_bytes"] // 2
    assert rows["int4 absmax group 32"]["bits_per_weight"] == 4 + 32 / 32
    assert abs(rows["int8 absmax per-channel"]["perplexity_change"]) < 0.01

    def perplexity(net):  # from the model's own loss, not from the code under test
        with torch.no_grad():
            nats = sum(net(x, y)[1].item() * y.numel() for x, y in batches)
        return math.exp(nats / sum(y.numel() for _, y in batches))

    fp32 = perplexity(m)
    int8 = perplexity(qz.quantize_model(m, bits=8, scheme="absmax", granularity="channel"))
    assert rows["fp32"]["perplexity"] == pytest.approx(fp32, rel=1e-4)
    assert rows["int8 absmax per-channel"]["perplexity"] == pytest.approx(int8, rel=1e-4)
    assert rows["int8 absmax per-channel"]["perplexity_change"] == pytest.approx(int8 / fp32 - 1, abs=1e-4)
    assert all(r["forward_seconds"] > 0 for r in rows.values())
    assert rows["int8 absmax per-channel"]["weight_bytes"] == qz.linear_weight_bytes(
        qz.quantize_model(m, bits=8, scheme="absmax", granularity="channel"))
    text = ev.format_table(list(rows.values()), timings=False)
    assert "bnb nf4" in text and " ms" not in text
    assert " ms" in ev.format_table(list(rows.values()))
    assert f"{rows['fp32']['perplexity']:.1f} " in ev.format_table(list(rows.values()), digits=1)
    with pytest.raises(ValueError, match="digits=-1"):
        ev.format_table(list(rows.values()), digits=-1)
    with pytest.raises(ValueError, match="repeats=-1"):
        qz.compare_methods(m, batches, ["fp32"], repeats=-1)
    with pytest.raises(ValueError, match="method='int2'"):
        qz.apply_method(m, "int2")


@pytest.mark.parametrize("settings", [dict(bits=8, granularity="channel"), dict(bits=4, granularity="group", group_size=16)])
def test_pooled_error_bits_equal_the_quantized_model_and_errors_the_concatenated_weights(settings):
    m = model()
    pooled = qz.pooled_error(m, **settings)
    quantized = qz.quantize_model(m, **settings)
    assert pooled["bits_per_weight"] == pytest.approx(qz.linear_weight_bits(quantized))
    names = [n for n, mod in m.named_modules() if type(mod) is torch.nn.Linear and not n.endswith("lm_head")]
    original = torch.cat([m.get_submodule(n).weight.detach().flatten() for n in names])
    approx = torch.cat([quantized.get_submodule(n).weight.flatten() for n in names])  # what the layers use
    assert pooled["sqnr_db"] == pytest.approx(qz.error_stats(original, approx)["sqnr_db"], rel=1e-6)


def test_linear_weight_bytes_count_codes_scales_and_absmax():
    m = model()
    weights = sum(mod.weight.numel() for n, mod in m.named_modules()
                  if type(mod) is torch.nn.Linear and not n.endswith("lm_head"))
    rows = sum(mod.out_features for n, mod in m.named_modules()
               if type(mod) is torch.nn.Linear and not n.endswith("lm_head"))
    assert qz.linear_weight_bytes(m) == 4 * weights
    assert qz.linear_weight_bytes(qz.quantize_model(m, bits=8, granularity="channel")) == weights + 4 * rows
    assert qz.linear_weight_bytes(qz.to_bitsandbytes(m, "int8")) == weights + 4 * rows  # int8 codes + fp32 SCB
    assert qz.linear_weight_bytes(qz.to_bitsandbytes(m, "nf4", double_quant=False)) == weights // 2 + 4 * weights // 64


def test_portable_bitsandbytes_turns_the_bf16_kernel_off_everywhere():
    m = qz.to_bitsandbytes(model(), "nf4", cpu_bf16_kernel=True)
    layers = [mod for mod in m.modules() if type(mod).__name__ == "Linear4bit"]
    assert layers and qz.portable_bitsandbytes(m) is m
    assert not any(layer.support_avx512bf16_for_cpu for layer in layers)


def test_forward_seconds_is_a_positive_median_and_checks_repeats():
    m = model()
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    assert ev.forward_seconds(m, ids, repeats=3) > 0
    with pytest.raises(ValueError, match="repeats=0"):
        ev.forward_seconds(m, ids, repeats=0)


def test_transformers_bitsandbytes_config_builds_the_layers_of_to_bitsandbytes(tmp_path):
    """Our checkpoint folder loaded by transformers with a BitsAndBytesConfig computes the logits of our
    own bitsandbytes swap, and scores the same perplexity through evaluate_nll (output objects too)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to quantize while loading
    from slmbook.checkpoint import save_checkpoint

    qz.import_bitsandbytes()
    m = model()
    save_checkpoint(tmp_path / "ck", m)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    batches = ev.evaluation_batches(torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(4)), 16, 4)
    cases = {
        "int8": (transformers.BitsAndBytesConfig(load_in_8bit=True), qz.to_bitsandbytes(m, "int8")),
        "nf4": (transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                bnb_4bit_compute_dtype=torch.float32),
                qz.to_bitsandbytes(m, "nf4", double_quant=False)),
        "fp4 double": (transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.float32),
                       qz.to_bitsandbytes(m, "fp4")),
    }
    for name, (config, ours) in cases.items():
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck", quantization_config=config,
                                                               dtype=torch.float32, device_map={"": "cpu"})
        qz.portable_bitsandbytes(hf)
        with torch.no_grad():
            assert torch.allclose(hf(ids).logits.float(), ours(ids).float(), atol=1e-4), name
        assert qz.linear_weight_bytes(hf) == qz.linear_weight_bytes(ours), name
        assert ev.evaluate_nll(hf, batches)[0] == pytest.approx(ev.evaluate_nll(ours, batches)[0], rel=1e-5), name


def test_evaluation_batches_spread_windows_over_the_whole_stream():
    tokens = torch.arange(1001)  # 100 windows of 10 tokens (+1 target)
    batches = ev.evaluation_batches(tokens, context=10, batch_size=4, max_windows=5, spread=True)
    starts = [int(x[0]) for inputs, _ in batches for x in inputs]
    assert starts == [0, 250, 500, 740, 990]  # windows 0, 25, 50, 74, 99: evenly over the stream
    first = ev.evaluation_batches(tokens, context=10, batch_size=4, max_windows=5)
    assert [int(x[0]) for inputs, _ in first for x in inputs] == [0, 10, 20, 30, 40]
    everything = ev.evaluation_batches(tokens, context=10, batch_size=100, max_windows=500, spread=True)
    assert everything[0][0].shape == (100, 10)  # asking for more windows than there are gives them all
    with pytest.raises(ValueError, match="max_windows=0"):
        ev.evaluation_batches(tokens, context=10, batch_size=4, max_windows=0)


def test_chapter_12_reaches_the_evaluation_names_through_quantization():
    # the notebook calls qz.evaluation_batches, qz.evaluate_nll, qz.forward_seconds and qz.format_table
    for name in ("evaluation_batches", "evaluate_nll", "forward_seconds", "format_table"):
        assert getattr(qz, name) is getattr(ev, name)
