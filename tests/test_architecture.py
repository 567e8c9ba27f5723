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


def _class_strings(package: str, attribute: str) -> set[str]:
    """The string values of `attribute = "..."` in the classes of a package's modules (names of the
    registered units, read from the source)."""
    found = set()
    for path in (PKG / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == attribute for t in item.targets)
                        and isinstance(item.value, ast.Constant)
                        and isinstance(item.value.value, str)
                    ):
                        found.add(item.value.value)
    return found - {"base"}


def _comparisons_with(names: set[str], skip, side=lambda other: True) -> list[str]:
    """Every `==`, `!=`, `in` or `not in` outside the modules `skip` accepts where one side is one of
    names (or a literal tuple, list or set holding one) and the other side passes `side` (its source)."""
    found = []
    for module, path in MODULES.items():
        if skip(module):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            for i, part in enumerate(sides):
                elts = part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
                hit = [e.value for e in elts if isinstance(e, ast.Constant) and e.value in names]
                others = [ast.unparse(o) for j, o in enumerate(sides) if j != i]
                if hit and any(side(o) for o in others):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_nothing_outside_families_compares_a_family_by_name():
    """A family answers everything about itself: no code outside families/ compares anything with a family's
    name or kohya version (the tiny and toy-world model builders, which build one of each, aside)."""
    names = _class_strings("families", "name") | _class_strings("families", "kohya_version")
    assert {"sd1", "sd2", "sdxl", "sd3", "flux", "sd_v2"} <= names, names
    builders = ("dreambooth.families", "dreambooth.tiny", "dreambooth.tiny_flow", "dreambooth.toyworld")
    found = _comparisons_with(names, lambda m: m.startswith(builders))
    assert not found, "\n".join(found)


def test_nothing_outside_methods_and_optimizers_compares_one_by_name():
    """Nor a method's or an optimizer's name with what says which one a run uses (`lora` as the --lora
    option and the settings' key is an option's name, not the method's, and is not looked at here)."""
    methods = _class_strings("methods", "name")
    optimizers = _class_strings("optimizers", "name")
    assert {"lora", "full", "textual-inversion"} <= methods and {"adamw", "adamw8bit"} <= optimizers
    found = _comparisons_with(methods, lambda m: m.startswith("dreambooth.methods"), lambda o: "method" in o)
    found += _comparisons_with(optimizers, lambda m: m.startswith("dreambooth.optimizers"), lambda o: "optimizer" in o)
    assert not found, "\n".join(found)
