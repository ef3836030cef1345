"""The import graph of a package, read from its source with `ast` (nothing is imported).

Every `import` and `from … import` counts: at the top of a module, under `if TYPE_CHECKING:` and
inside a function alike, because each is a dependency of the code that holds it. `from a import b`
is an edge to the module `a.b` when there is one, else to `a`. Importing a submodule also runs
its package's `__init__`, but that is Python's mechanics, not a dependency the code states, so it
is not an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    """One import: `source` imports `target` at `line`; `local` when inside a function."""

    source: str
    target: str
    line: int
    local: bool

    def __str__(self) -> str:
        return f"{self.source} → {self.target} (line {self.line}{', in a function' if self.local else ''})"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under `root` (the directory of `package`)."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


class _Walker(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: Iterable[str], package: str) -> None:
        self.module = module
        self.is_package = is_package
        self.known = set(known)
        self.package = package
        self.depth = 0  # > 0 inside a function
        self.edges: list[Edge] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        if target == self.package or target.startswith(self.package + "."):
            self.edges.append(Edge(self.module, target, node.lineno, self.depth > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            where = ".".join([*base, node.module] if node.module else base)
        else:
            where = node.module or ""
        for alias in node.names:
            sub = f"{where}.{alias.name}"
            self._add(sub if sub in self.known else where, node)


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every import of `package` by its own modules."""
    names = module_names(root, package)
    edges: list[Edge] = []
    for module, path in names.items():
        walker = _Walker(module, path.name == "__init__.py", names, package)
        walker.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges += walker.edges
    return edges


# --- layers --------------------------------------------------------------------------------------


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]]) -> int | None:
    """The index of the layer whose longest prefix names `module` (a prefix `a.b` matches `a.b` and
    `a.b.c`; a prefix `a.` only `a` itself and nothing below it)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            exact = prefix.endswith(".")
            name = prefix.rstrip(".")
            matches = module == name or (not exact and module.startswith(name + "."))
            if matches and (best is None or len(name) > best[1]):
                best = (index, len(name))
    return None if best is None else best[0]


def upward(edges: Iterable[Edge], layers: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The imports that go to a higher layer, and the modules that are in no layer."""
    problems = []
    for e in edges:
        source, target = layer_of(e.source, layers), layer_of(e.target, layers)
        if source is None or target is None:
            problems.append(f"{e}: {e.source if source is None else e.target} is in no layer")
        elif target > source:
            problems.append(f"{e}: {layers[source][0]} imports {layers[target][0]}")
    return problems


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The import cycles: each group of modules that import one another, directly or not (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def outside(edges: Iterable[Edge], sources: str, allowed: Sequence[str]) -> list[str]:
    """The imports by the modules under the prefix `sources` of anything but the prefixes `allowed`
    (a front end may import only the face and the few lower modules it reads)."""
    within = [("sources", (sources,))]
    permitted = [("allowed", tuple(allowed))]
    return [
        f"{e}: {sources} may import only {', '.join(allowed)}"
        for e in edges
        if layer_of(e.source, within) is not None and layer_of(e.target, permitted) is None
    ]


# --- the layer table of the README -----------------------------------------------------------------

LAYER_TABLE_HEADER = "| layer (lowest first) | files under `src/postroom/` |"


def prefix_of(path: str, package: str) -> str:
    """`store/` → `package.store` (the package and all below it); `mime.py` → `package.mime.` (that
    module only); `__init__.py` → `package.` (the package's own module only)."""
    if path.endswith("/"):
        return f"{package}.{path.rstrip('/').replace('/', '.')}"
    name = path.removesuffix(".py").replace("/", ".")
    return f"{package}." if name == "__init__" else f"{package}.{name}."


def readme_layers(text: str, package: str) -> list[tuple[str, tuple[str, ...]]]:
    """The layers as the README's table lists them: [(name, module prefixes)], lowest first."""
    lines = text.splitlines()
    start = lines.index(LAYER_TABLE_HEADER) + 2  # after the header and the |---| line
    layers = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, files = (cell.strip() for cell in line.strip("|").split("|")[:2])
        paths = [p.strip().strip("`") for p in files.split(",")]
        layers.append((name, tuple(prefix_of(p, package) for p in paths)))
    return layers
