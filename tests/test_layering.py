"""The package's layering: every module imports on its own, and the pure
(layer 0) modules stay pure: no sockets, selectors, signals or forking, and
no imports from higher layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastproxy"
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
    for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"
)
PURE = {"fastproxy.config", "fastproxy.errors", "fastproxy.arbiter",
        "fastproxy.stats.shm", "fastproxy.stats.export", "fastproxy.upstream.balance",
        "fastproxy.http", "fastproxy.http.events", "fastproxy.http.framing",
        "fastproxy.http.headers", "fastproxy.http.state", "fastproxy.http.syntax",
        "fastproxy.proxyproto", "fastproxy.acl", "fastproxy.upstream.parents"}
FORBIDDEN = {"socket", "selectors", "signal", "select", "subprocess", "multiprocessing"}


def _source(module: str) -> Path:
    path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.exists() else path.with_suffix("") / "__init__.py"


def _imports(module: str) -> set[str]:
    path = _source(module)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_module_list_is_not_empty() -> None:
    assert "fastproxy.master" in MODULES and "fastproxy.relay" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_module_has_no_io_imports(module: str) -> None:
    imported = _imports(module)
    assert not (imported & FORBIDDEN), f"{module} imports {imported & FORBIDDEN}"
    internal = {name for name in imported if name.startswith("fastproxy")}
    assert internal <= PURE | {"fastproxy"}, f"{module} imports {internal - PURE}"


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_module_does_not_fork(module: str) -> None:
    assert "os.fork" not in _source(module).read_text()


def test_importing_the_package_has_no_side_effects() -> None:
    code = "import sys, fastproxy; print(sorted(m for m in sys.modules if m.startswith('fastproxy')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "['fastproxy']"
