"""The shape of the code stays as README's "How the code is laid out" says: stages import one way, no import cycles,
nothing imports the CLI registrar. Read from the source with ``ast``, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# Lower layers first. A module may import its own package and any package of a lower layer, never a higher one
# or another package of its own layer (data and models do not know each other).
LAYERS = [
    {"tl.errors"},  # shared by every stage, in their own order
    {"tl.config", "tl.progress", "tl.shipped"},  # tl.shipped: the SLURM templates, accelerate configs, recipes
    {"tl.runtime", "tl.entry"},
    {"tl.data", "tl.models", "tl.viz", "tl.viz.confusion", "tl.viz.curves", "tl.viz.pr_curves"},  # the stages, and pictures that only draw
    {"tl.inference"},
    {"tl.training"},
    {"tl.cluster", "tl.viz.gradcam", "tl.viz.grids", "tl.viz.lrfind", "tl.viz.inputs"},  # commands that use every stage
    {"tl.cli", "tl.api", "tl.train", "tl.predict_dir", "tl.doctor"},  # the Python API, the registrar and the programs users run with python -m
]
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tl_imports(path: Path) -> set[str]:
    """The tl modules ``path`` imports, anywhere in the file (a ``from tl.x import y`` of a submodule y counts as tl.x.y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tl.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "tl":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found - {"tl"}  # the package's __init__ holds only __version__


def graph(root: Path = ROOT / "tl") -> dict[str, set[str]]:
    """Module -> the tl modules it imports (names that are not modules, e.g. functions, are dropped)."""
    files = {module_name(p): p for p in root.rglob("*.py") if p != root / "__init__.py"}
    edges = {}
    for name, path in files.items():
        edges[name] = {m for m in tl_imports(path) if m in files and m != name}
    return edges


def layer_of(module: str) -> int:
    """The rank of the most specific LAYERS entry that holds ``module``."""
    best = None
    for rank, group in enumerate(LAYERS):
        for entry in group:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (rank, entry)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS (and to README's layout section)"
    return best[0]


def package_of(module: str) -> str:
    """tl.data.decode -> tl.data; the shared top-level modules are each their own."""
    return ".".join(module.split(".")[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (each reported once, from its first module)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """Imports of a module of the same or a higher layer in another package (inside a package, only cycles count)."""
    return sorted(f"{module} -> {target}" for module, imports in edges.items() for target in imports
                  if package_of(target) != package_of(module) and layer_of(target) >= layer_of(module))


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_stages_import_one_way():
    assert layer_violations(graph()) == []


def test_nothing_imports_the_cli_registrar():
    edges = graph()
    assert sorted(m for m, imports in edges.items() if "tl.cli" in imports) == []


def test_modules_stay_small():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in (ROOT / "tl").rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_checks_can_fail():
    """The guards find what they guard against: a cycle and an upward import, made up here."""
    edges = {"tl.data.a": {"tl.data.b"}, "tl.data.b": {"tl.data.a"}, "tl.models.m": {"tl.training.run"}, "tl.training.run": set()}
    assert cycles(edges) == [["tl.data.a", "tl.data.b", "tl.data.a"]]
    assert layer_violations(edges) == ["tl.models.m -> tl.training.run"]
    assert layer_violations({"tl.data.x": {"tl.models.y"}, "tl.models.y": set()}) == ["tl.data.x -> tl.models.y"]
