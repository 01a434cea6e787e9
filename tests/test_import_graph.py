"""No import cycle inside slmbook/: the package reads bottom-up, each module only on modules below it.

The graph is built from the source (ast), not by importing: every `import slmbook.x` and
`from slmbook.x import y` counts, at module level and inside functions alike. A function-level import
does not fail at import time, but it is still a dependency a reader has to follow, and a cycle through
one is the same tangle; so both count. `from slmbook import x` counts as an import of slmbook.x.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "slmbook"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the slmbook modules it imports anywhere in its source."""
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.level:  # a relative import: resolve it against this module's package
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    module = ".".join([*package[: len(package) - node.level + 1], node.module])
                else:
                    module = node.module
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)  # `from slmbook import x`
        graph[name] = {t for t in targets if t in modules and t != name and t != "slmbook"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of `graph`, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles_through_function_level_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "slmbook.generation" in graph["slmbook.qwen"]  # QwenModel.generate imports it inside the method
