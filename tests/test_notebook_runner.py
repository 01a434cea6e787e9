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
