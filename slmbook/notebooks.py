"""Run the chapter notebooks headless and check their conventions: one tool for readers, CI and authors.

    python -m slmbook.notebooks list                       # chapters, written or missing
    python -m slmbook.notebooks run                        # every notebook, quick mode -> executed/
    python -m slmbook.notebooks run 07 -p device cuda      # one chapter with a parameter changed
    python -m slmbook.notebooks run 07 --inplace           # refresh the committed outputs
    python -m slmbook.notebooks gpu                        # full chapters 3 and 14 on a GPU -> docs/executed/
    python -m slmbook.notebooks check                      # conventions of every notebook
    python -m slmbook.notebooks new 07                     # scaffold a chapter notebook
    python -m slmbook.notebooks pin                        # set-up cells install v<__version__> on Colab

Conventions (checked by `check` and by tests/test_notebook_conventions.py): the file is named after its
chapter (`slmbook.chapters`); cell 1 is the markdown title "# Chapter N · Title"; cell 2 is the set-up
cell below, verbatim, pinned to the package version (`pinned_ref`); exactly one code cell is tagged
`parameters` and assigns only literal defaults that run the chapter on 2 CPU cores in about a minute; the notebook seeds its random generators
(`seed_everything`); every code cell was executed in order, outputs are stored, and none is an error.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

from slmbook.chapters import CHAPTERS, Chapter, chapter

SETUP_CELL = '''\
# Set-up. On Google Colab this installs slmbook (with its data) from GitHub, at the version these
# outputs were made with ({ref}); on your machine or on Binder the package is installed already (see
# the README) and this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    import importlib

    pinned = "slmbook @ git+https://github.com/{repository}@{ref}"
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", pinned], check=False).returncode:
        print("{ref} is not published yet: installing main instead (outputs may differ from the stored ones)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", pinned.replace("@{ref}", "@main")], check=True)
    importlib.invalidate_caches()  # the new package imports in this session, no restart needed

%matplotlib inline'''



class NotebookFailed(RuntimeError):
    """A notebook raised an error while it ran."""


def pinned_ref() -> str:
    """The git tag the notebooks' set-up cell installs on Colab: v<the package version>.

    Pinned, not `main`: a notebook's stored outputs were made by one version of the package, and an
    old notebook opened on Colab must get that version, not whatever main has become. A release bumps
    `__version__` (and pyproject.toml), tags the commit v<version>, and runs `python -m slmbook.notebooks
    pin`; `run --inplace` pins each notebook it executes too.
    """
    from slmbook import __version__

    return f"v{__version__}"


def setup_cell_source(ref: str | None = None) -> str:
    """The set-up cell, installing `ref` (default: `pinned_ref()`) of the project's repository on Colab."""
    from slmbook.chapters import REPOSITORY

    return SETUP_CELL.format(repository=REPOSITORY, ref=ref or pinned_ref())


def pin(keys=None) -> list[Path]:
    """Rewrite the set-up cell (the first code cell) of the notebooks named by `keys` (default: all) to
    install `pinned_ref()`; only that cell's source changes. Returns the notebooks that changed."""
    changed = []
    lines = setup_cell_source().splitlines(keepends=True)
    for path in notebook_paths(keys or ()):
        text = path.read_text(encoding="utf-8")
        nb = json.loads(text)
        cell = next((c for c in nb["cells"] if c.get("cell_type") == "code"), None)
        if cell is None:
            raise ValueError(f"{path.name}: has no code cell to hold the set-up cell")
        if _source(cell) == "".join(lines):
            continue
        cell["source"] = lines
        _write(path, nb)
        changed.append(path)
    return changed


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (next to the package in a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "notebooks"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "notebooks"
    if cwd.is_dir():
        return cwd
    raise FileNotFoundError(
        "no notebooks/ folder found next to slmbook or in the current directory; "
        "run from a clone of the repository"
    )


def existing() -> list[Chapter]:
    """Chapters whose notebook exists, in order."""
    folder = notebooks_dir()
    return [ch for ch in CHAPTERS if (folder / ch.notebook).is_file()]


def missing() -> list[Chapter]:
    """Chapters whose notebook is not written yet."""
    written = existing()
    return [ch for ch in CHAPTERS if ch not in written]


def notebook_paths(keys=()) -> list[Path]:
    """The notebooks named by `keys` (see `resolve`), or every existing one."""
    return [resolve(str(k)) for k in keys] if keys else [notebooks_dir() / ch.notebook for ch in existing()]


def resolve(key: str) -> Path:
    """Path of a chapter's notebook from '7', '07', a notebook name or a path; clear error otherwise."""
    path = Path(key)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    ch = chapter(path.name)
    target = notebooks_dir() / ch.notebook
    if not target.is_file():
        raise ValueError(f"notebook={key!r}: chapter {ch.number} ({ch.notebook}) is not written yet")
    return target


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, nb: dict) -> None:
    """Write `nb` as Jupyter does (indent 1, UTF-8), through a temporary file: never half a notebook."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def parameters(path: Path) -> dict:
    """Name -> default value of the notebook's `parameters` cell (literal assignments only)."""
    cells = [c for c in _read(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path.name}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    values = {}
    for node in ast.parse(_source(cells[0])).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path.name}: the parameters cell may only hold `name = literal` lines, "
                             f"found: {ast.unparse(node)!r}")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"{path.name}: parameter {node.targets[0].id} must have a literal default, "
                             f"found {ast.unparse(node.value)!r}") from None
    return values


def parse_value(text: str):
    """A command-line value: a Python literal if it parses as one (3, 0.1, True, None), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(path: Path, given: dict) -> dict:
    """Validate overrides against the notebook's defaults: known names, compatible types."""
    defaults = parameters(path)
    checked = {}
    for name, value in given.items():
        if name not in defaults:
            raise ValueError(f"parameter {name!r} is not a parameter of {path.name}; "
                             f"allowed: {sorted(defaults)}")
        default = defaults[name]
        ok = (default is None or value is None or type(value) is type(default)
              or (type(default) is float and type(value) is int))
        if not ok:
            raise TypeError(f"parameter {name}={value!r} has type {type(value).__name__}, but {path.name} "
                            f"expects {type(default).__name__} (default {default!r})")
        checked[name] = float(value) if type(default) is float and type(value) is int else value
    return checked


def run(keys=None, params: dict | None = None, out_dir: str | Path = "executed", inplace: bool = False,
        kernel: str = "python3", timeout: int = 1800) -> list[Path]:
    """Execute notebooks with papermill (quick-mode defaults unless `params` override them).

    Writes executed copies to `out_dir`, or with `inplace=True` refreshes the committed outputs
    (then overrides are refused: the committed notebook must show the defaults).
    """
    import papermill

    paths = notebook_paths(keys)
    params = dict(params or {})
    if inplace and params:
        raise ValueError("--inplace stores the committed outputs, which must come from the defaults: "
                         "drop the -p overrides or write to --out")
    if not isinstance(timeout, int) or timeout < 1:
        raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds")
    checked = {path: check_parameters(path, params) for path in paths}  # all errors before any run
    written = []
    if inplace:
        pin(paths)  # the stored outputs will come from this version: the set-up cell installs it
    for path in paths:
        target = path if inplace else Path(out_dir) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f"running {path.name} ...", flush=True)
        try:
            papermill.execute_notebook(
                str(path), str(target), parameters=checked[path], kernel_name=kernel,
                cwd=str(path.parent), progress_bar=False, execution_timeout=timeout,
            )
        except papermill.PapermillExecutionError as error:
            raise NotebookFailed(f"{path.name}: cell {error.exec_count} raised {error.ename}: {error.evalue} "
                                 f"(the executed copy with the traceback is {target})") from None
        if inplace:
            _strip_run_metadata(target)
        print(f"  wrote {target} in {time.perf_counter() - start:.1f} s", flush=True)
        written.append(target)
    return written


# The chapters kept in full for readers without a GPU: their parameters for one GPU (chapter 14 reads a
# folder of TinyStories text, `stories_dir` or $SLMBOOK_TINYSTORIES_DIR; `-p data hub` streams the hub's).
GPU_PARAMETERS = {
    "03": {"device": "auto", "matmul_sizes": [256, 512, 1024, 2048, 4096, 8192, 16384], "bandwidth_mib": 1024,
           "measure_config": "book", "measure_batch": 16, "measure_seq": 512},
    "14": {"device": "cuda", "preset": "book", "data": "local", "eval_interval": None, "eval_batches": None,
           "run_name": "book"},
}


def executed_dir() -> Path:
    """docs/executed/ of the repository: the executed GPU copies, committed next to the notebooks."""
    return notebooks_dir().parent / "docs" / "executed"


def gpu_slug(name: str) -> str:
    """A short file-name part for a GPU as torch names it: 'NVIDIA H200' -> 'h200', 'Tesla T4' -> 't4'."""
    words = [w for w in name.lower().replace("_", " ").replace("-", " ").split() if w not in ("nvidia", "tesla")]
    slug = "-".join("".join(ch for ch in w if ch.isalnum()) for w in words).strip("-")
    if not slug:
        raise ValueError(f"GPU name {name!r} gives an empty file-name part")
    return slug


def keep_gpu_copy(executed: Path, target: Path, gpu: str, parameters: dict, seconds: float) -> Path:
    """Store a notebook executed on a GPU as `target`: papermill's machine paths and timestamps dropped,
    what ran where recorded in the notebook's metadata (`slmbook_gpu_run`)."""
    nb = _without_run_metadata(_read(executed))
    nb["metadata"]["slmbook_gpu_run"] = {"gpu": gpu, "parameters": parameters, "seconds": round(seconds, 1)}
    target.parent.mkdir(parents=True, exist_ok=True)
    _write(target, nb)
    return target


def run_gpu(keys=None, params: dict | None = None, out_dir: str | Path | None = None, timeout: int = 1800) -> list[Path]:
    """Run chapters 3 and 14 (or `keys`) with `GPU_PARAMETERS` (changed by `params`) on this machine's GPU
    and keep each as docs/executed/<notebook>_<gpu>.ipynb, replacing that GPU's earlier copy."""
    import tempfile

    import torch

    if not torch.cuda.is_available():
        raise ValueError("python -m slmbook.notebooks gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "the executed copies in docs/executed/ show what the full chapters give on one")
    keys = list(keys or GPU_PARAMETERS)
    gpu = torch.cuda.get_device_name(0)
    out = Path(out_dir) if out_dir is not None else executed_dir()
    kept = []
    for path in notebook_paths(keys):
        key = f"{chapter(path.name).number:02d}"
        if key not in GPU_PARAMETERS:
            raise ValueError(f"chapter {key} has no full GPU version; allowed: {sorted(GPU_PARAMETERS)}")
        parameters = {**GPU_PARAMETERS[key], **(params or {})}
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            [executed] = run([key], parameters, out_dir=scratch, timeout=timeout)
            kept.append(keep_gpu_copy(executed, out / f"{path.stem}_{gpu_slug(gpu)}.ipynb", gpu, parameters,
                                      time.perf_counter() - start))
        print(f"  kept {kept[-1]}", flush=True)
    return kept


def _without_run_metadata(nb: dict) -> dict:
    """`nb` without papermill's record of the run (its machine's paths, timestamps, durations)."""
    nb["metadata"].pop("papermill", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
    return nb


def _strip_run_metadata(path: Path) -> None:
    """Drop papermill's timestamps so a refreshed notebook differs from the last only where outputs do."""
    _write(path, _without_run_metadata(_read(path)))


def check(path: Path) -> list[str]:
    """Problems with a notebook's conventions (empty when it follows them all)."""
    path = Path(path)
    problems = []
    try:
        ch = chapter(path.name)
    except ValueError:
        return [f"{path.name}: not named after a chapter (expected one of {[c.notebook for c in CHAPTERS]})"]
    if path.name != ch.notebook:
        problems.append(f"{path.name}: chapter {ch.number}'s notebook must be named {ch.notebook}")
    try:
        nb = _read(path)
    except json.JSONDecodeError as error:
        return [f"{path.name}: not valid JSON ({error})"]
    cells = nb.get("cells", [])
    code = [c for c in cells if c.get("cell_type") == "code"]
    if not cells or cells[0].get("cell_type") != "markdown" or not _source(cells[0]).startswith(f"# Chapter {ch.number} "):
        problems.append(f"{path.name}: the first cell must be markdown starting '# Chapter {ch.number} · {ch.title}'")
    if len(cells) < 2 or cells[1].get("cell_type") != "code" or _source(cells[1]).strip() != setup_cell_source().strip():
        problems.append(f"{path.name}: the second cell must be the set-up cell (slmbook.notebooks.SETUP_CELL)")
    try:
        parameters(path)
    except ValueError as error:
        problems.append(str(error))
    if not any("seed_everything(" in _source(c) for c in code):
        problems.append(f"{path.name}: no fixed seed (call slmbook.env.seed_everything(seed))")
    counts = [c.get("execution_count") for c in code if _source(c).strip()]
    if any(n is None for n in counts):
        problems.append(f"{path.name}: {sum(n is None for n in counts)} code cell(s) have no stored execution; "
                        f"run `python -m slmbook.notebooks run {ch.number:02d} --inplace`")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(f"{path.name}: cells were not executed top to bottom in one run (execution counts {counts})")
    if not any(c.get("outputs") for c in code):
        problems.append(f"{path.name}: no stored outputs")
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        problems.append(f"{path.name}: {len(errors)} stored error output(s): {errors[0].get('ename')}")
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"{path.name}: kernelspec must be 'python3', found {kernel!r}")
    return problems


def new(key) -> Path:
    """Scaffold chapter `key`'s notebook: title, set-up cell, parameters cell, seed cell."""
    import nbformat

    ch = chapter(key)
    target = notebooks_dir() / ch.notebook
    if target.exists():
        raise FileExistsError(f"{target} exists already; edit it instead")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(
        "# Parameters (papermill). The defaults run this chapter on 2 CPU cores in about a minute.\n"
        "# For the full version: device = \"auto\" (uses a GPU when there is one) and larger sizes.\n"
        "device = \"cpu\"\nseed = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# Chapter {ch.number} · {ch.title}\n\nWhat you will see: {ch.sees}."),
        nbformat.v4.new_code_cell(setup_cell_source()),
        params,
        nbformat.v4.new_code_cell("from slmbook.env import pick_device, seed_everything\n\n"
                                  "seed_everything(seed)\ndevice = pick_device(device)"),
    ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    nbformat.write(nb, str(target))
    return target


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slmbook.notebooks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="chapters and whether their notebook exists")
    p_run = sub.add_parser("run", help="execute notebooks headless with papermill")
    p_run.add_argument("notebooks", nargs="*", help="chapter numbers or names (default: all that exist)")
    p_run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p_run.add_argument("--out", default="executed", help="folder for executed copies (default: executed/)")
    p_run.add_argument("--inplace", action="store_true", help="store outputs in the committed notebooks")
    p_run.add_argument("--kernel", default="python3")
    p_run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    p_gpu = sub.add_parser("gpu", help="run the full chapters 3 and 14 on this GPU and keep them in docs/executed/")
    p_gpu.add_argument("notebooks", nargs="*", help=f"chapters (default: {' '.join(GPU_PARAMETERS)})")
    p_gpu.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p_gpu.add_argument("--out", default=None, help="folder for the copies (default: docs/executed/)")
    p_gpu.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    p_check = sub.add_parser("check", help="check notebook conventions")
    p_check.add_argument("notebooks", nargs="*")
    p_pin = sub.add_parser("pin", help="make the set-up cell install this package version on Colab")
    p_pin.add_argument("notebooks", nargs="*", help="chapter numbers or names (default: all that exist)")
    p_new = sub.add_parser("new", help="scaffold a chapter notebook")
    p_new.add_argument("chapter")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            have = {ch.number for ch in existing()}
            for ch in CHAPTERS:
                print(f"{ch.number:2d}  {'written' if ch.number in have else 'missing':8s} {ch.notebook}")
        elif args.command == "run":
            params = {}
            for name, value in args.parameter:
                params[name] = parse_value(value)
            start = time.perf_counter()
            written = run(args.notebooks, params, out_dir=args.out, inplace=args.inplace,
                          kernel=args.kernel, timeout=args.timeout)
            print(f"executed {len(written)} notebook(s) in {time.perf_counter() - start:.1f} s")
        elif args.command == "gpu":
            params = {name: parse_value(value) for name, value in args.parameter}
            kept = run_gpu(args.notebooks, params, out_dir=args.out, timeout=args.timeout)
            print(f"kept {len(kept)} executed GPU copy(ies)")
        elif args.command == "check":
            paths = notebook_paths(args.notebooks)
            problems = [p for path in paths for p in check(path)]
            for problem in problems:
                print(problem)
            print(f"checked {len(paths)} notebook(s): {len(problems)} problem(s); "
                  f"missing chapters: {[ch.number for ch in missing()] or 'none'}")
            return 1 if problems else 0
        elif args.command == "pin":
            changed = pin(args.notebooks)
            print(f"set-up cells install {pinned_ref()}: {len(changed)} notebook(s) changed")
        elif args.command == "new":
            print(f"created {new(args.chapter)}")
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotebookFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
