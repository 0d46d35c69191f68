"""fastproxy.http is layer 0: stdlib only (no I/O modules), and inside fastproxy it
imports nothing but fastproxy.errors and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fastproxy" / "http"
MODULES = sorted(PACKAGE.glob("*.py"))
FORBIDDEN = {"socket", "selectors", "signal", "select", "subprocess", "multiprocessing", "os",
             "asyncio", "ssl", "threading"}
MAX_LINES = 500


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_http_module_is_pure(path: Path) -> None:
    names = imported(path)
    assert not {n.split(".")[0] for n in names} & FORBIDDEN
    internal = {n for n in names if n.startswith("fastproxy")}
    assert all(n == "fastproxy.errors" or n.startswith("fastproxy.http") for n in internal), internal


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_http_module_is_small(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) <= MAX_LINES
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None and node.end_lineno - node.lineno < 50, node.name
