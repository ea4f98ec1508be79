"""The import layering ARCHITECTURE.md draws is the one the code has.

The layers are read from the ```layers block of ARCHITECTURE.md, so the document and this test
cannot drift apart. Every import counts, including those inside functions.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xbt"
MAX_LINES = 400
#: only these may import the toy models (xbt.toy's model names, xbt.toy.models)
TOY_MODEL_USERS = {"xbt", "xbt.demo", "xbt.app", "xbt.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """The xbt modules ``path`` imports (relative imports resolved; ``from pkg import mod`` gives ``pkg.mod``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    known = set(modules())
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):  # some names are attributes of ``target`` itself
                found.add(target)
    return {m for m in found if m == "xbt" or m.startswith("xbt.")} - {name}


def architecture_layers() -> dict[str, int]:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```layers block"
    layers = {}
    for line in block.group(1).strip().splitlines():
        number, names = line.split(maxsplit=1)
        for name in names.split(","):
            name = name.strip()
            layers["xbt" if name == "xbt" else f"xbt.{name}"] = int(number)
    return layers


def test_every_module_is_placed_in_a_layer_of_architecture_md():
    layers = architecture_layers()
    assert sorted(set(modules()) - set(layers)) == [], "modules missing from ARCHITECTURE.md's layers"
    assert sorted(set(layers) - set(modules())) == [], "ARCHITECTURE.md names modules that do not exist"


def test_imports_point_down_the_layers_only():
    layers = architecture_layers()
    upward = []
    for name, path in modules().items():
        for target in imports(path):
            if target in layers and layers[target] >= layers[name]:
                upward.append(f"{name} (layer {layers[name]}) imports {target} (layer {layers[target]})")
    assert upward == []


def test_importing_a_toy_data_module_loads_no_model_code():
    # importing xbt.toy.data runs xbt/toy/__init__.py first: its module-level imports must be data only
    assert imports(PACKAGE / "toy" / "__init__.py", module_level_only=True) == {"xbt.toy.data"}


def test_only_the_entry_points_load_the_toy_models():
    offenders = []
    for name, path in modules().items():
        if name.startswith("xbt.toy") or name in TOY_MODEL_USERS:
            continue
        bad = {t for t in imports(path) if t in ("xbt.toy", "xbt.toy.models")}
        if bad:
            offenders.append(f"{name} imports {sorted(bad)}")
    assert offenders == []


def test_no_import_cycles():
    graph = {name: imports(path) & set(modules()) for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_under_the_size_limit(name):
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept"


def test_no_loading_by_name_string_or_context_variables():
    used = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            used += [f"{name}: {n}" for n in names if n.split(".")[0] in ("importlib", "contextvars")]
    assert used == []


def test_the_package_root_only_re_exports():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_all = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]
        assert isinstance(node, (ast.Import, ast.ImportFrom)) or is_docstring or is_all, ast.dump(node)[:80]
    importers = sorted(name for name, path in modules().items() if name != "xbt" and "xbt" in imports(path))
    assert importers == [], "modules import the package root (read the version from xbt.version)"
