"""The house rules: the package map ARCHITECTURE.md draws is the one the code has, and the code is formatted.

The layers are read from the ```layers block of ARCHITECTURE.md, so the document and this test
cannot drift apart. A room is a sub-package (``xbt.method``) or a top-level module
(``xbt.version``); a module may import from its own room and from rooms of lower layers only.
Every import counts, including those inside functions.
"""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xbt"
MAX_LINES = 400
#: "about 8" modules a sub-package; method (two stage-2 paths, guard, checkpoints, ...) and gallery hold 9
MAX_MODULES = 9
#: the only top-level modules besides the sub-packages
TOP_LEVEL = ["__init__.py", "version.py"]
#: the rooms that may load the shipped toy models: the toy world itself and the entry points above it
TOY_MODEL_USERS = {"xbt", "xbt.toy", "xbt.app", "xbt.cli"}
#: the one room that resolves module paths from strings (the old paths it keeps working)
BY_NAME = {"xbt.compat"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(name: str) -> str:
    """``xbt.method.stage2`` -> ``xbt.method``; ``xbt.version`` -> ``xbt.version``; ``xbt`` -> ``xbt``."""
    return ".".join(name.split(".")[:2])


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


def test_every_room_is_placed_in_a_layer_of_architecture_md():
    layers = architecture_layers()
    rooms = {room(m) for m in modules()}
    assert sorted(rooms - set(layers)) == [], "rooms missing from ARCHITECTURE.md's layers"
    assert sorted(set(layers) - rooms) == [], "ARCHITECTURE.md names rooms that do not exist"


def test_imports_point_down_the_layers_only():
    layers = architecture_layers()
    upward = []
    for name, path in modules().items():
        for target in imports(path):
            here, there = room(name), room(target)
            if here != there and layers[there] >= layers[here]:
                upward.append(f"{name} (layer {layers[here]}) imports {target} (layer {layers[there]})")
    assert upward == []


def test_only_sub_packages_and_the_package_faces_sit_at_the_top():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == TOP_LEVEL


@pytest.mark.parametrize("package", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_a_sub_package_holds_a_handful_of_modules_and_says_what_lives_there(package):
    folder = PACKAGE / package
    assert len([p for p in folder.glob("*.py") if p.name != "__init__.py"]) <= MAX_MODULES
    docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
    assert docstring and len(docstring.split()) >= 8, (
        f"xbt/{package}/__init__.py needs a docstring saying what lives there"
    )


def test_the_toy_package_imports_no_model_code_when_imported():
    # xbt.toy's model names load lazily: its module-level imports, and theirs, stay clear of model code
    toy_level = imports(PACKAGE / "toy" / "__init__.py", module_level_only=True)
    assert toy_level == {"xbt.toy.splits", "xbt.toy.worlds"}
    for name in toy_level:
        loaded = imports(modules()[name], module_level_only=True)
        assert not {m for m in loaded if m.startswith("xbt.models") or m == "xbt.toy.models"}, name


def test_only_the_entry_points_load_the_toy_models():
    offenders = []
    for name, path in modules().items():
        if room(name) in TOY_MODEL_USERS:
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
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(node) :] + [node]))
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
        if room(name) in BY_NAME:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
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


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert found, "ruff is part of the dev extra: pip install -e '.[dev]'"
    return [found]


def test_ruff_finds_nothing_to_fix():
    run = subprocess.run([*_ruff(), "check", "xbt", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    run = subprocess.run(
        [*_ruff(), "format", "--check", "xbt", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
