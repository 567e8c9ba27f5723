"""docs/architecture.md stays true: every module is in the layer table, imports only from its own layer or
the ones below (imports inside functions included; `if TYPE_CHECKING:` ones are type hints, not imports),
and the import graph has no circle. Read from the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "dreambooth"
ENTRY = {"dreambooth", "dreambooth.__main__"}  # the package's docstring and `python -m dreambooth`


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _outside_parentheses(text: str) -> str:
    out, depth = [], 0
    for ch in text:
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")" and depth > 0
    return "".join(out)


def layers() -> dict[str, int]:
    """Top-level module or package name -> its layer, from the table's rows (names in parentheses are a
    package's parts, or what a module holds, and are left out)."""
    found = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"\| (\d)\. [^|]+\| ([^|]+) \|", line)
        if not m:
            continue
        for name in re.findall(r"`([\w/]+(?:\.py)?)`", _outside_parentheses(m.group(2))):
            top = "dreambooth." + name.removesuffix(".py").removesuffix("/")
            if top in MODULES:
                found[top] = int(m.group(1))
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the package in the module, type-checking ones left out."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names if a.name.startswith("dreambooth"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = ".".join(base[: len(base) - child.level + 1])
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                if not target.startswith("dreambooth"):
                    continue
                subs = [f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in MODULES]
                found.extend((child.lineno, t) for t in (subs or [target]))
            visit(child)

    visit(ast.parse(path.read_text()))
    return [(line, t if t in MODULES else t.rpartition(".")[0]) for line, t in found]


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_is_placed_in_a_layer():
    placed = layers()
    assert len(set(placed.values())) == 7, placed
    missing = sorted({_top(m) for m in MODULES} - set(placed) - ENTRY)
    assert not missing, f"modules in no layer of docs/architecture.md: {missing}"


def test_no_module_imports_from_a_layer_above_its_own():
    placed = layers()
    above = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} (layer {placed[_top(t)]} > {placed[_top(m)]})"
        for m in MODULES
        if m not in ENTRY
        for line, t in imports(m)
        if _top(t) in placed and placed[_top(t)] > placed[_top(m)]
    ]
    assert not above, "\n".join(above)


def test_the_import_graph_has_no_circle():
    graph = {m: {t for _, t in imports(m) if t != m} for m in MODULES}
    circles, state = [], {}

    def walk(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(" -> ".join([*path[path.index(t) :], t]))
            elif t not in state:
                walk(t, [*path, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not circles, "\n".join(circles)
