"""The package's layers only look down, and its imports form no cycle.

    ops (0)  <-  model (1)  <-  tools (2)        the package root (__init__, __main__) is above all

Every `import` / `from ... import` of a levit_kernels module anywhere in a file (function-level
imports included, since they are imports all the same) is an edge of the graph read here
from the source with `ast`, without importing anything.
"""
import ast
from pathlib import Path

import levit_kernels

PACKAGE = Path(levit_kernels.__file__).resolve().parent
LAYERS = {"ops": 0, "model": 1, "tools": 2}
ROOT_LAYER = 3


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], ROOT_LAYER) if len(parts) > 1 else ROOT_LAYER


def imports_of(path: Path, module: str, modules):
    """The levit_kernels modules `path` imports. `from X import a` names the module X.a when
    there is one (the submodule is what it depends on), else X; `import X.Y` names X.Y."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.startswith("levit_kernels"))
    return found


def graph():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for module, path in modules.items():
        targets = set()
        for name in imports_of(path, module, modules):
            while name not in modules and "." in name:   # an extension module (_C): its package
                name = name.rpartition(".")[0]
            if name != module:
                targets.add(name)
        edges[module] = targets
    return edges


def test_every_import_points_down_a_layer():
    wrong = [f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
             for src, targets in graph().items() for dst in targets if layer(dst) > layer(src)]
    assert not wrong, "imports pointing up a layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of dependence:
    # leave out the edges from a package to the modules inside it.
    deps = {src: {dst for dst in targets if not dst.startswith(src + ".")}
            for src, targets in edges.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(deps[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(deps):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_the_known_edges():
    """The checks above are only as good as the graph: it must see imports of every form."""
    edges = graph()
    assert "levit_kernels.ops.checks" in edges["levit_kernels.ops.cpu"]          # from . import
    assert "levit_kernels.ops.extension" in edges["levit_kernels.ops.cpu"]      # from .m import
    assert "levit_kernels.model.levit" in edges["levit_kernels.model.fused"]
    assert "levit_kernels.ops.cpu" in edges["levit_kernels.model.plan"]          # from ..ops import
    assert "levit_kernels.tools.bench" in edges["levit_kernels.tools.cli"]      # inside a function


def test_every_folder_of_python_is_a_package():
    """setuptools' packages.find (pyproject.toml) ships only folders with an __init__.py: one
    without is in an editable install (as a namespace) and missing from a wheel."""
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders
                     if not (f / "__init__.py").exists())
    assert not missing, f"no __init__.py in {missing}"
