"""One list of dependencies (pyproject.toml); README, environment.yml and binder/ agree with it."""

import re
import tomllib
from pathlib import Path

import yaml

from slmbook import notebooks
from slmbook.chapters import CHAPTERS, REPOSITORY, readme_table

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip_lines(env_file):
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    return [line for d in deps if isinstance(d, dict) for line in d.get("pip", [])]


def test_environment_yml_installs_the_package_with_the_pyproject_extras():
    pip = _pip_lines(ROOT / "environment.yml")
    installs = [line for line in pip if not line.startswith("--")]
    assert installs == ["-e .[lab,test]"], "environment.yml must install the package, not list packages by hand"
    extras = set(re.search(r"\[(.*)\]", installs[0]).group(1).split(","))
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_binder_builds_from_pyproject():
    env = yaml.safe_load((ROOT / "binder/environment.yml").read_text())
    assert _pip_lines(ROOT / "binder/environment.yml") == []
    assert any(str(d).startswith("python") for d in env["dependencies"])
    post = (ROOT / "binder/postBuild").read_text()
    assert re.search(r'pip install .*-e "\.\[lab\]"', post)
    assert (ROOT / "binder/postBuild").stat().st_mode & 0o111, "postBuild must be executable"


def test_every_pyproject_dependency_is_a_chosen_or_needed_package():
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    assert {"torch", "matplotlib", "ipywidgets", "tiktoken", "datasets", "bitsandbytes", "tqdm"} <= names
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"jupyterlab", "ipykernel"} <= {re.split(r"[<>=]", d)[0] for d in extras["lab"]}
    assert {"pytest", "nbval", "transformers"} <= {re.split(r"[<>=]", d)[0] for d in extras["test"]}


def test_readme_has_the_two_commands_and_the_chapter_table():
    readme = (ROOT / "README.md").read_text()
    top = readme[: readme.index("## Chapters")]
    assert "# 1. " in top and "# 2. " in top
    assert readme_table() in readme
    for ch in CHAPTERS:
        assert ch.colab_url in readme and ch.binder_url in readme


def test_links_use_the_project_repository():
    url = PYPROJECT["project"]["urls"]["Homepage"]
    assert url == f"https://github.com/{REPOSITORY}"
    assert f"git+{url}@" in notebooks.setup_cell_source()


def test_shipped_data_is_package_data():
    assert "resources/**/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["slmbook"]


def test_readme_package_tree_is_the_one_chapters_py_generates():
    from slmbook.chapters import README_TREE, readme_tree

    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(README_TREE[0]), readme.index(README_TREE[1]) + len(README_TREE[1])
    assert readme[start:end] == readme_tree(), "run `python -m slmbook.chapters` to regenerate the README's tree"


def test_package_tree_names_every_module_and_only_existing_ones():
    from slmbook.chapters import package_tree

    package = ROOT / "slmbook"
    files = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    files |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    named = [name for name, _, _ in package_tree()]
    assert len(named) == len(set(named)), "a module stands twice in the tree"
    assert sorted(files - set(named)) == [], "modules missing from slmbook/chapters.py (modules or support)"
    assert sorted(set(named) - files) == [], "the tree names files that do not exist"
