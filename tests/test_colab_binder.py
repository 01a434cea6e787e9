"""Colab and Binder, without their servers: the set-up cell's behaviour and binder's resolution."""

import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

from IPython.core.inputtransformer2 import TransformerManager
from packaging.requirements import Requirement

from slmbook import notebooks
from slmbook.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parent.parent


def _run_setup_cell(monkeypatch, on_colab: bool, published: bool = True):
    """Execute the set-up cell as IPython would, recording pip calls and magics instead of running them
    (published=False: pip fails for the pinned tag, as before a release's tag is pushed)."""
    calls, magics = [], []

    def pip(cmd, check):
        calls.append(cmd)
        failed = not published and cmd[-1].endswith(notebooks.pinned_ref())
        if failed and check:
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, int(failed))

    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", pip)
    shell = types.SimpleNamespace(run_line_magic=lambda name, arg: magics.append((name, arg)))
    code = TransformerManager().transform_cell(notebooks.setup_cell_source())
    exec(compile(code, "setup-cell", "exec"), {"get_ipython": lambda: shell})
    return calls, magics


def test_setup_cell_installs_from_github_on_colab(monkeypatch):
    calls, magics = _run_setup_cell(monkeypatch, on_colab=True)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q",
                      f"slmbook @ git+https://github.com/slmbook/slmbook@{notebooks.pinned_ref()}"]]
    assert magics == [("matplotlib", "inline")]


def test_setup_cell_falls_back_to_main_when_the_tag_is_not_published(monkeypatch, capsys):
    calls, _ = _run_setup_cell(monkeypatch, on_colab=True, published=False)
    url = "slmbook @ git+https://github.com/slmbook/slmbook@"
    assert [cmd[-1] for cmd in calls] == [url + notebooks.pinned_ref(), url + "main"]
    assert "is not published yet: installing main" in capsys.readouterr().out


def test_setup_cell_does_nothing_elsewhere(monkeypatch):
    calls, magics = _run_setup_cell(monkeypatch, on_colab=False)
    assert calls == [] and magics == [("matplotlib", "inline")]


def test_every_notebook_starts_with_the_setup_cell():
    for ch in CHAPTERS:
        path = notebooks.notebooks_dir() / ch.notebook
        if path.exists():
            cell = json.loads(path.read_text())["cells"][1]
            assert "".join(cell["source"]).strip() == notebooks.setup_cell_source().strip(), ch.notebook


def test_binder_resolves_to_the_pyproject_dependencies(tmp_path):
    """Resolve what binder/postBuild installs (pip --dry-run) and compare it with pyproject.toml."""
    post = (ROOT / "binder" / "postBuild").read_text()
    line = next(text for text in post.splitlines() if "pip install" in text)
    args = line.split("pip install", 1)[1].split()
    args = [a for i, a in enumerate(args) if not a.startswith("--extra-index-url")
            and not (i and args[i - 1] == "--extra-index-url")]  # the CPU wheel index is not reachable offline
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
                             str(report), *[a.strip('"') for a in args]],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = json.loads(report.read_text())["install"]
    [slmbook] = [r for r in resolved if r["metadata"]["name"] == "slmbook"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = sorted(project["optional-dependencies"])

    def requirement(text: str) -> tuple:
        """(name, version range, the extras it is installed with here): marker spelling aside."""
        req = Requirement(text)
        wanted = frozenset(e for e in ["", *extras] if req.marker is None or req.marker.evaluate({"extra": e}))
        return req.name, str(req.specifier), wanted

    expected = {requirement(d) for d in project["dependencies"]}
    for extra, deps in project["optional-dependencies"].items():
        for d in deps:
            req = Requirement(d)
            marker = f'({req.marker}) and extra == "{extra}"' if req.marker else f'extra == "{extra}"'
            expected.add(requirement(f"{req.name}{req.specifier}; {marker}"))
    assert {requirement(r) for r in slmbook["metadata"]["requires_dist"]} == expected
    assert re.search(r'\.\[lab\]', line)
