"""Every script under scripts/ imports: a module it names that moved or was renamed fails here, not in a user's
hands (the scripts run rarely and none of their imports is otherwise exercised by the suite)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_script_imports():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "scripts").rglob("*.py")
        if p.name != "__init__.py"
    )
    assert len(modules) >= 10
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
