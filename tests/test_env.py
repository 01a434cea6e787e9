import random

import pytest
import torch

from slmbook import env


def test_pick_device_cpu_and_auto():
    assert env.pick_device("cpu") == torch.device("cpu")
    assert env.pick_device("auto").type in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("bad", ["gpu", "tpu", ""])
def test_pick_device_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match=f"device={bad!r} is unknown"):
        env.pick_device(bad)


def test_pick_device_refuses_cuda_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        env.pick_device("cuda")


def test_seed_everything_repeats_random_streams():
    env.seed_everything(7)
    first = (random.random(), torch.rand(3))
    env.seed_everything(7)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed="):
        env.seed_everything(bad)


def test_online_honours_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert env.online("huggingface.co") is False


def test_online_is_false_for_a_closed_local_port():
    assert env.online("127.0.0.1", port=9, timeout=0.5) is False


def test_report_describes_the_machine():
    info = env.report("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["TinyStories source"] in ("hub", "sample")
    assert isinstance(info["bf16"], bool)
    text = env.format_report(info)
    assert text.splitlines()[0].startswith("python")
