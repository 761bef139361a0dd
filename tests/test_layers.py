"""The package's shape, checked from its source: layers, no circles, no private reads.

Layers, lowest first: errors -> uapi (declarations and the one ops layer) -> backends
-> the public objects -> tools (CLI, accounting, demo). A module imports only from its
own layer or lower ones, anywhere in the file (lazy imports inside functions count: a
reader sees them too); no import circle exists; and no module reads another module's
private attribute (``obj._x`` where ``_x`` is declared in some other module): the
public objects talk to each other through public names or the friend functions their
own module provides.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pydmabuf"


def _modname(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_modname(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _tree(module: str) -> ast.Module:
    # Parsed per use and dropped: a module-level cache of every tree would make each
    # later test's gc.collect() (the fd-leak fixture) walk a million AST nodes.
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


def layer(module: str) -> int:
    parts = module.split(".")
    if module == "pydmabuf":
        return 4  # the facade: re-exports the public objects, and tools such as accounting
    if module in ("pydmabuf.errors", "pydmabuf._version"):
        return 0
    if len(parts) > 1 and parts[1] == "uapi":
        return 1
    if len(parts) > 1 and parts[1] == "backends":
        return 2
    if len(parts) > 1 and parts[1] in ("tools", "__main__", "vm"):
        return 4  # vm is a user-facing tool (it boots the real-kernel test VM)
    return 3


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports, anywhere in its file."""
    is_pkg = MODULES[module].name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports mod (and runs pkg's __init__, as any
            # import of mod does); `from pkg import name` imports pkg itself.
            subs = [f"{stem}.{alias.name}" for alias in node.names]
            targets = [t for t in subs if t in MODULES] or [stem]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_tree_has_the_layers() -> None:
    assert {layer(m) for m in MODULES} == {0, 1, 2, 3, 4}
    assert "pydmabuf.uapi.ops" in MODULES and "pydmabuf.tools.cli" in MODULES


def test_imports_go_down_the_layers() -> None:
    upward = {m: sorted(t for t in GRAPH[m] if layer(t) > layer(m)) for m in GRAPH}
    assert not {m: up for m, up in upward.items() if up}


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _declared(tree: ast.Module) -> set[str]:
    """Private names a module declares: defs, classes, slots, assigned attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Tuple, ast.List)) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            names.update(str(e.value) for e in node.value.elts if isinstance(e, ast.Constant))
    return names


# The standard library's documented functions whose names start with an underscore.
DOCUMENTED_UNDERSCORED = {("sys", "_getframe"), ("os", "_exit")}


def _private_reads(module: str, tree: ast.Module | None = None) -> list[str]:
    tree = tree or _tree(module)
    own = _declared(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in DOCUMENTED_UNDERSCORED:
                continue
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if _private(a.name)]
    return found


def test_no_private_attribute_read_across_modules() -> None:
    reads = {m: _private_reads(m) for m in MODULES}
    assert not {m: found for m, found in reads.items() if found}


def test_the_private_read_check_can_fail() -> None:
    tree = ast.parse("def f(buf):\n    return buf._backend\n\ndef g(self):\n    return self._x\n")
    assert _private_reads("probe", tree) == ["line 2: ._backend"]
    tree = ast.parse("import sys\ndef f(m):\n    return sys._getframe(1), m._getframe\n")
    assert _private_reads("probe", tree) == ["line 3: ._getframe"]  # only sys's is documented
