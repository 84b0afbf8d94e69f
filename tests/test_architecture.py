"""The layering rules of ARCHITECTURE.md, checked on the source (import-linter checks the rest).

`sip` imports only the standard library; `sip` and `shaken` never open sockets or files and
never read the clock (time is a parameter); `fixtures/` is not a package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORES = ("sip", "shaken")

# Calls that read the wall clock or do I/O: forbidden in the sans-IO cores.
FORBIDDEN_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "localtime"),
    ("time", "gmtime"),
}
FORBIDDEN_NAMES = {"open"}
FORBIDDEN_MODULES = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "urllib.request",
    "http.client",
    "subprocess",
    "os",
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", _modules("sip"), ids=lambda p: p.name)
def test_sip_imports_only_the_standard_library(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for name in _imports(tree):
        top = name.split(".")[0]
        assert top == "sip" or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def violations(source: str) -> list[str]:
    """Every forbidden import, clock read or file open in ``source``."""
    tree = ast.parse(source)
    found = [f"imports {name}" for name in _imports(tree) if name in FORBIDDEN_MODULES]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            if (owner, func.attr) in FORBIDDEN_CALLS or func.attr in {"now", "utcnow"}:
                found.append(f"line {node.lineno}: {owner}.{func.attr}()")
        elif isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
            found.append(f"line {node.lineno}: {func.id}()")
    return found


@pytest.mark.parametrize(
    "path", [p for pkg in CORES for p in _modules(pkg)], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_cores_do_no_io_and_read_no_clock(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "from datetime import datetime\nx = datetime.now()\n",
        "import datetime\nx = datetime.datetime.utcnow()\n",
        "import time\nx = time.time()\n",
        "import socket\n",
        "data = open('x').read()\n",
    ],
    ids=["datetime.now", "utcnow", "time.time", "socket", "open"],
)
def test_checker_catches_violations(source: str) -> None:
    assert violations(source)


def test_fixtures_is_not_a_package() -> None:
    assert not (ROOT / "fixtures" / "__init__.py").exists()
