"""Chapter 14's quality benchmark, as a smoke run on the CPU: its results files are written, and --add
gathers runs measured in separate calls into one table only where they are comparable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


@pytest.fixture
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_tinystories_gpu", REPO / "benchmarks" / "train_tinystories_gpu.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")  # never the committed results
    return module


def test_add_gathers_runs_of_two_calls(bench, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert bench.main(["--smoke", "--runs", "tiny", "--runs-dir", runs]) == 0
    first = json.loads((tmp_path / "results" / "training_tinystories_smoke.json").read_text())
    assert [r["name"] for r in first["runs"]] == ["tiny"]

    assert bench.main(["--smoke", "--runs", "tiny-25%", "--add", "--runs-dir", runs]) == 0
    both = json.loads((tmp_path / "results" / "training_tinystories_smoke.json").read_text())
    assert [r["name"] for r in both["runs"]] == ["tiny", "tiny-25%"]  # in the script's order
    assert both["runs"][0]["history"] == first["runs"][0]["history"]  # kept as measured, not re-run
    assert both["commands"] == ["python benchmarks/train_tinystories_gpu.py --smoke --runs tiny --runs-dir runs",
                                "python benchmarks/train_tinystories_gpu.py --smoke --runs tiny-25% --add --runs-dir runs"]
    assert both["total_wall_s"] > first["total_wall_s"]
    md = (tmp_path / "results" / "training_tinystories_smoke.md").read_text()
    assert "over 2 calls" in md and "| tiny |" in md and "| tiny-25% |" in md
    assert "Data: a quarter of the stories" not in md  # that line compares book runs, not tiny ones

    # a third call with another number of steps would mix incomparable runs: refused, file untouched
    before = (tmp_path / "results" / "training_tinystories_smoke.json").read_text()
    assert bench.main(["--smoke", "--runs", "tiny", "--epochs", "2", "--add", "--runs-dir", runs]) == 2
    assert "steps" in capsys.readouterr().err
    assert (tmp_path / "results" / "training_tinystories_smoke.json").read_text() == before

    # ... and so would runs measured on another device
    other = json.loads(before)
    other["hardware"]["name"] = "NVIDIA H200"
    (tmp_path / "results" / "training_tinystories_smoke.json").write_text(json.dumps(other))
    assert bench.main(["--smoke", "--runs", "tiny", "--add", "--runs-dir", runs]) == 2
    assert "only added to the same data and device" in capsys.readouterr().err


def test_add_without_results_file_is_refused(bench, tmp_path, capsys):
    assert bench.main(["--smoke", "--runs", "tiny", "--add", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "run without --add first" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())

