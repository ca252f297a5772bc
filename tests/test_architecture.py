"""The shape of the package: the rooms import only downwards, and the tables load without torch."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "vit_explain"

# room -> the rooms it may import from (besides itself); data flows one way
ALLOWED = {
    "math": set(),
    "recording": set(),
    "io": set(),
    "methods": {"math", "recording"},
    "cli": {"math", "recording", "io", "methods"},
}
# single modules a room may import besides those rooms: Explanation's notebook helpers draw with
# io.figures (numpy, OpenCV, PIL; io imports nothing of ours, so no cycle), imported in the helpers only
ALSO = {"methods": {"vit_explain.io.figures"}}


def imported_modules(path: Path) -> set[str]:
    """The vit_explain modules (dotted names) a module imports, at module level or inside functions."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        modules.update(name for name in names if name.split(".")[0] == "vit_explain")
    return modules


def imported_rooms(path: Path, also=frozenset()) -> set[str]:
    """The vit_explain rooms a module imports (leaving out the single modules in also)."""
    rooms = set()
    for name in imported_modules(path) - set(also):
        parts = name.split(".")
        if len(parts) > 1 and parts[1] in ALLOWED:
            rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", list(ALLOWED))
def test_rooms_import_only_the_rooms_below_them(room):
    files = sorted((PACKAGE / room).rglob("*.py"))
    assert files
    for path in files:
        outside = imported_rooms(path, ALSO.get(room, ())) - {room} - ALLOWED[room]
        assert not outside, f"{path.relative_to(PACKAGE)} imports from {sorted(outside)}"


def test_the_scan_sees_relative_imports():
    # a check that cannot fail is a defect: the cli imports every room, methods two
    assert imported_rooms(PACKAGE / "cli" / "explaining.py") >= {"io", "methods"}
    assert imported_rooms(PACKAGE / "methods" / "base.py") >= {"math", "recording"}


def test_tables_and_help_load_without_torch():
    """The method table, the options and `vit-explain --help` must not import torch (a fast --help)."""
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "import vit_explain, vit_explain.methods.table, vit_explain.cli.options, vit_explain.cli.main\n"
            "from vit_explain.cli.main import main\n"
            "main(['--help'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--method NAME[,NAME...]" in result.stdout and "--per-layer" in result.stdout
