"""The package's shape: imports point down the stages (common <- nn <- pretrain <- stage2 <- {segment, classify} <-
study <- entry points), the two tasks side by side on one floor, neither importing the other, no import circle
(imports inside functions count), no module over 400 lines, at most 5% of lines over 100 characters, and no device
chosen outside ``mdm/common/devices.py`` (the device is resolved once at the entry point and passed down)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdm"
LAYERS = {"common": 0, "nn": 1, "pretrain": 2, "stage2": 3, "segment": 4, "classify": 4, "study": 5}
ENTRY_LAYER = 6  # mdm.cli and the ``python -m`` shims


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


def test_packages_on_one_floor_do_not_import_each_other():
    """The tasks (``segment``, ``classify``) share what they both need through ``stage2``, never through each other."""
    sideways = [f"{m} imports {t}" for m, targets in graph().items() for t in targets
                if layer(t) == layer(m) and m.split(".")[:2] != t.split(".")[:2] and len(t.split(".")) > 1
                and len(m.split(".")) > 1 and layer(m) != ENTRY_LAYER]
    assert not sideways, "\n".join(sideways)


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


def test_few_lines_over_100_characters():
    """Lines are broken at 100 characters where a break reads better; what is left over (a long string, a URL, a
    table row) stays under 5% of the package's lines."""
    lines = [line for p in package_modules().values() for line in p.read_text().splitlines()]
    long = sum(len(line) > 100 for line in lines)
    assert long < 0.05 * len(lines), f"{long} of {len(lines)} lines are over 100 characters"


def device_choices(path: Path) -> list[str]:
    """Places in ``path`` that pick a device themselves: a ``.cuda()`` or ``torch.cuda.is_available()`` call, a
    ``"cuda"`` string anywhere but in a comparison (``device.type == "cuda"``), or a ``device`` parameter with a
    string default."""
    tree = ast.parse(path.read_text())
    compared = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for side in [node.left, *node.comparators] for c in ast.walk(side)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda":
            found.append(f"{path.name}:{node.lineno}: .cuda()")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.cuda.is_available":
            found.append(f"{path.name}:{node.lineno}: torch.cuda.is_available()")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda")
              and id(node) not in compared):
            found.append(f"{path.name}:{node.lineno}: {node.value!r} outside a comparison")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            defaults = dict(zip([a.arg for a in args][len(args) - len(node.args.defaults):], node.args.defaults))
            defaults |= {a.arg: d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None}
            if isinstance(defaults.get("device"), ast.Constant) and isinstance(defaults["device"].value, str):
                found.append(f"{path.name}:{node.lineno}: {node.name}(device={defaults['device'].value!r})")
    return found


def test_devices_are_chosen_at_the_entry_point_only(tmp_path):
    rule_maker = PACKAGE / "common" / "devices.py"
    found = [f for p in PACKAGE.rglob("*.py") if p != rule_maker for f in device_choices(p)]
    assert not found, "\n".join(found)
    bad = tmp_path / "bad.py"
    bad.write_text('def f(x, device="cpu"):\n    return x.cuda(), torch.device("cuda"), torch.cuda.is_available()\n\n'
                   'def g(device):\n    return device.type in ("cpu", "cuda") or "cuda" == device.type\n')
    assert [f.split(": ", 1)[1] for f in device_choices(bad)] == [
        "f(device='cpu')", ".cuda()", "torch.cuda.is_available()", "'cuda' outside a comparison"]
