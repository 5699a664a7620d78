"""The package's shape: imports point down the stages (common <- nn <- pretrain <- segment <- bench <- entry points),
no import circle (imports inside functions count), no module over 400 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdm"
LAYERS = {"common": 0, "nn": 1, "pretrain": 2, "segment": 3, "bench": 4}
ENTRY_LAYER = 5  # mdm.cli and the ``python -m`` shims


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # mdm/__init__.py
    return LAYERS.get(parts[1], ENTRY_LAYER)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every ``mdm`` module that ``module`` imports, at top level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
    return {m for m in found if m in modules and m != module}


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_imports_point_down_the_stages():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in graph().items() for t in targets if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    circles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A deferred import is an import: the test above must see it."""
    modules = {"mdm.segment.a": tmp_path / "a.py", "mdm.segment.b": tmp_path / "b.py"}
    modules["mdm.segment.a"].write_text("def f():\n    from .b import g\n    return g\n")
    assert imports_of("mdm.segment.a", modules["mdm.segment.a"], modules) == {"mdm.segment.b"}


def test_no_module_over_400_lines():
    long = {m: n for m, p in package_modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
