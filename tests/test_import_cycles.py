"""No import circles among the project's packages (issue 17, item 5), function-level imports
included: modules import downward only, so each can be read, tested and replaced on its own.
The imports are read from the source (``ast``), nothing is imported."""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("training", "tinyimagenet_tfrecords", "augment", "models")


def _modules(root: str = REPO) -> dict[str, str]:
    """Every module of :data:`PACKAGES`: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), root)[:-3]
                    parts = rel.split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = os.path.join(folder, name)
    return found


def imports_of(source: str, module: str, known) -> set[str]:
    """The known modules ``source`` (module ``module``) imports anywhere: top level, inside
    functions or ``if`` blocks. ``from package import name`` is the submodule when ``name``
    is one, else the package."""
    package = module if module in known and _is_package(module, known) else \
        module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {_known_prefix(a.name, known) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else _known_prefix(base, known))
    return out - {None, module}


def _is_package(module: str, known) -> bool:
    return any(m.startswith(module + ".") for m in known)


def _known_prefix(name: str, known) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def import_graph(root: str = REPO) -> dict[str, set[str]]:
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            graph[name] = imports_of(f.read(), name, modules)
    return graph


def test_the_packages_have_no_import_circle():
    graph = import_graph()
    assert {"training.loop", "training.evaluate", "tinyimagenet_tfrecords.pipeline"} <= set(graph)
    assert "training.multiworker" in graph["training.loop"]  # the walk sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_function_level_and_relative_imports_count():
    known = {"training", "training.a", "training.b", "pkg", "pkg.sub", "pkg.sub.c"}
    inner = "def f():\n    if True:\n        from training import b\n"
    assert imports_of(inner, "training.a", known) == {"training.b"}
    assert imports_of("from . import a\nfrom .c import x\n", "pkg.sub.c", known) == {"pkg.sub"}
    assert imports_of("from .c import x\n", "pkg.sub", known) == {"pkg.sub.c"}
    assert imports_of("import training.b.x\n", "training.a", known) == {"training.b"}
    graph = {"training.a": imports_of(inner, "training.a", known),
             "training.b": imports_of("import training.a\n", "training.b", known)}
    assert find_cycle(graph) == ["training.a", "training.b", "training.a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
