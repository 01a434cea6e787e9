"""The notebook runner: clear errors for bad input, and a real headless run with a parameter."""

import json

import pytest

from slmbook import notebooks


def test_unknown_notebook_is_a_clear_error():
    with pytest.raises(ValueError, match="notebook='99' is not a chapter"):
        notebooks.run(["99"])


def test_unknown_parameter_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"parameter 'steps' is not a parameter of 00_from_scratch.ipynb; allowed: \['device', 'seed'\]"):
        notebooks.run(["00"], {"steps": 3})


def test_parameter_of_wrong_type_is_refused():
    with pytest.raises(TypeError, match="parameter seed='one' has type str, but 00_from_scratch.ipynb expects int"):
        notebooks.run(["00"], {"seed": "one"})


def test_inplace_refuses_overrides():
    with pytest.raises(ValueError, match="--inplace"):
        notebooks.run(["00"], {"seed": 1}, inplace=True)


def test_cli_reports_errors_with_exit_code_2(capsys):
    assert notebooks._main(["run", "00", "-p", "seed", "abc"]) == 2
    assert "expects int" in capsys.readouterr().err


def test_parse_value_reads_literals_and_strings():
    assert notebooks.parse_value("3") == 3
    assert notebooks.parse_value("0.5") == 0.5
    assert notebooks.parse_value("True") is True
    assert notebooks.parse_value("cuda") == "cuda"


def test_int_given_for_float_parameter_is_widened(tmp_path):
    path = tmp_path / "05_language_models.ipynb"
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "lr = 0.1\n",
            "outputs": [], "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert notebooks.check_parameters(path, {"lr": 1}) == {"lr": 1.0}


def test_run_executes_headless_with_a_parameter(tmp_path):
    [out] = notebooks.run(["00"], {"seed": 3}, out_dir=tmp_path)
    nb = json.loads(out.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "seed = 3" in "".join(injected[0]["source"])
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == []


# The executed GPU copies (docs/executed/) and the command that refreshes them.

def test_gpu_parameters_are_parameters_of_their_chapters():
    for key, params in notebooks.GPU_PARAMETERS.items():
        [path] = notebooks.notebook_paths([key])
        assert notebooks.check_parameters(path, params) == params


@pytest.mark.parametrize("name, slug", [("NVIDIA H200", "h200"), ("Tesla T4", "t4"), ("NVIDIA L4", "l4"),
                                        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
                                        ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3")])
def test_gpu_slug(name, slug):
    assert notebooks.gpu_slug(name) == slug


def test_gpu_copies_need_a_gpu(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert notebooks._main(["gpu"]) == 2
    assert "needs a CUDA GPU (torch.cuda.is_available() is False)" in capsys.readouterr().err


def test_gpu_copy_is_kept_without_machine_paths(tmp_path):
    executed = tmp_path / "run.ipynb"
    nb = {"cells": [{"cell_type": "code", "source": "1", "outputs": [], "execution_count": 1,
                     "metadata": {"papermill": {"duration": 1.0}, "execution": {"iopub.status.idle": "x"}}}],
          "metadata": {"papermill": {"input_path": "/home/someone/notebooks/14_training.ipynb"}},
          "nbformat": 4, "nbformat_minor": 5}
    executed.write_text(json.dumps(nb))
    target = notebooks.keep_gpu_copy(executed, tmp_path / "docs" / "14_training_h200.ipynb", "NVIDIA H200",
                                     {"device": "cuda"}, 12.34)
    kept = json.loads(target.read_text())
    assert "/home/someone" not in target.read_text() and "papermill" not in kept["metadata"]
    assert kept["cells"][0]["metadata"] == {}
    assert kept["metadata"]["slmbook_gpu_run"] == {"gpu": "NVIDIA H200", "parameters": {"device": "cuda"}, "seconds": 12.3}
    assert sorted(p.name for p in target.parent.iterdir()) == ["14_training_h200.ipynb"]


@pytest.mark.parametrize("key", sorted(notebooks.GPU_PARAMETERS))
def test_committed_gpu_copies_ran_the_full_chapter_cleanly(key):
    """docs/executed/ holds each full chapter from a real GPU run: the GPU parameters injected, every code
    cell executed in order without an error, and no path of the machine it ran on."""
    [path] = notebooks.notebook_paths([key])
    copies = sorted(notebooks.executed_dir().glob(f"{path.stem}_*.ipynb"))
    assert copies, f"no executed GPU copy of {path.name} in docs/executed/"
    for copy in copies:
        text = copy.read_text(encoding="utf-8")
        nb = json.loads(text)
        run = nb["metadata"]["slmbook_gpu_run"]
        assert copy.name == f"{path.stem}_{notebooks.gpu_slug(run['gpu'])}.ipynb"
        assert run["parameters"] == notebooks.GPU_PARAMETERS[key]
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1
        code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
        assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
        assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
        for machine_path in ("/root/", "/home/", "/tmp/", "/work/", "/Users/"):
            assert machine_path not in text, f"{copy.name} holds a machine path ({machine_path})"
