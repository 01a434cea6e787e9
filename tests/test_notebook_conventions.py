"""Every chapter notebook follows the conventions of slmbook.notebooks; missing chapters are listed."""

import json
import shutil

import pytest

from slmbook import notebooks
from slmbook.chapters import CHAPTERS


@pytest.mark.parametrize("ch", CHAPTERS, ids=lambda ch: ch.notebook)
def test_chapter_notebook_follows_conventions(ch):
    path = notebooks.notebooks_dir() / ch.notebook
    if not path.exists():
        pytest.skip(f"chapter {ch.number} ({ch.notebook}) is not written yet")
    assert notebooks.check(path) == []


def test_no_stray_notebooks():
    names = {ch.notebook for ch in CHAPTERS}
    stray = [p.name for p in notebooks.notebooks_dir().glob("*.ipynb") if p.name not in names]
    assert stray == [], f"notebooks not named after a chapter: {stray}"


@pytest.fixture
def chapter0(tmp_path):
    """A copy of chapter 0 (a notebook known to follow the conventions) to break in each test."""
    target = tmp_path / "00_from_scratch.ipynb"
    shutil.copy(notebooks.notebooks_dir() / "00_from_scratch.ipynb", target)
    assert notebooks.check(target) == []
    return target


def _edit(path, change):
    nb = json.loads(path.read_text())
    change(nb)
    path.write_text(json.dumps(nb))


def test_check_flags_missing_parameters_cell(chapter0):
    _edit(chapter0, lambda nb: [c["metadata"].pop("tags", None) for c in nb["cells"]])
    assert any("parameters" in p for p in notebooks.check(chapter0))


def test_check_flags_missing_outputs(chapter0):
    def clear(nb):
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                c["outputs"], c["execution_count"] = [], None
    _edit(chapter0, clear)
    problems = notebooks.check(chapter0)
    assert any("no stored execution" in p for p in problems)
    assert any("no stored outputs" in p for p in problems)


def test_check_flags_stored_error(chapter0):
    def add_error(nb):
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        code[-1]["outputs"].append({"output_type": "error", "ename": "ZeroDivisionError",
                                    "evalue": "division by zero", "traceback": []})
    _edit(chapter0, add_error)
    assert any("error output" in p for p in notebooks.check(chapter0))


def test_check_flags_changed_setup_cell_and_missing_seed(chapter0):
    def change(nb):
        nb["cells"][1]["source"] = "import slmbook"
        for c in nb["cells"]:
            c["source"] = "".join(c["source"]).replace("seed_everything(", "print(")
    _edit(chapter0, change)
    problems = notebooks.check(chapter0)
    assert any("set-up cell" in p for p in problems)
    assert any("seed" in p for p in problems)


def test_check_flags_non_literal_parameter(chapter0):
    def change(nb):
        for c in nb["cells"]:
            if "parameters" in c["metadata"].get("tags", []):
                c["source"] = "import os\ndevice = os.environ['X']"
    _edit(chapter0, change)
    assert any("parameters cell" in p for p in notebooks.check(chapter0))


def test_check_flags_out_of_order_execution(chapter0):
    def change(nb):
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        code[0]["execution_count"], code[1]["execution_count"] = 2, 1
    _edit(chapter0, change)
    assert any("top to bottom" in p for p in notebooks.check(chapter0))


def test_setup_cell_installs_only_on_colab_from_the_project_repository():
    source = notebooks.setup_cell_source()
    assert 'if "google.colab" in sys.modules:' in source
    assert "git+https://github.com/slmbook/slmbook@v" in source  # a fixed version ...
    assert source.index("@main") > source.index("is not published yet")  # ... main only as the fallback


def test_setup_cell_pins_the_package_version():
    from slmbook import __version__

    assert notebooks.pinned_ref() == f"v{__version__}"
    assert f"git+https://github.com/slmbook/slmbook@v{__version__}\"" in notebooks.setup_cell_source()


def test_pin_rewrites_only_the_setup_cell_source(chapter0):
    before = json.loads(chapter0.read_text())
    def unpin(nb):
        nb["cells"][1]["source"] = notebooks.setup_cell_source(ref="main").splitlines(keepends=True)
    _edit(chapter0, unpin)
    assert any("set-up cell" in p for p in notebooks.check(chapter0))  # an unpinned cell is flagged
    assert notebooks.pin([chapter0]) == [chapter0]
    after = json.loads(chapter0.read_text())
    assert after == before and notebooks.check(chapter0) == []  # outputs, metadata, other cells untouched
    assert notebooks.pin([chapter0]) == []  # pinned already: nothing to write
