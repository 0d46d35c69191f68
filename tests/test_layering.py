"""The package's layering: every module imports on its own, the pure (layer 0)
modules stay pure (no sockets, selectors, signals or forking), no module
imports from a layer above its own (not even under ``TYPE_CHECKING``), and
modules stay within their size budget."""

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
# Layer of each module (a package's modules default to the package's entry).
LAYERS: dict[str, int] = {
    # L0 pure: data, protocol, policy
    "fastproxy": 0, "fastproxy.config": 0, "fastproxy.overrides": 0, "fastproxy.errors": 0, "fastproxy.arbiter": 0,
    "fastproxy.fairqueue": 0,
    "fastproxy.http": 0, "fastproxy.proxyproto": 0, "fastproxy.acl": 0,
    "fastproxy.upstream": 0, "fastproxy.upstream.balance": 0, "fastproxy.upstream.parents": 0,
    "fastproxy.stats": 0, "fastproxy.stats.shm": 0, "fastproxy.stats.export": 0,
    # L1 engine: the loop and what moves bytes
    "fastproxy.reactor": 1, "fastproxy.relay": 1, "fastproxy.log": 1, "fastproxy.resolver": 1,
    "fastproxy.files": 1, "fastproxy.service": 1,
    "fastproxy.stats.procinfo": 1, "fastproxy.upstream.pool": 1,
    # L2 what a worker's modes share; the master's helpers
    "fastproxy.context": 2, "fastproxy.upstream.runtime": 2, "fastproxy.upstream.health": 2,
    "fastproxy.listeners": 2, "fastproxy.stats.admin": 2, "fastproxy.reloading": 2,
    "fastproxy.upgrade": 2,
    # L3 the modes (connection handlers)
    "fastproxy.modes": 3,
    # L4 processes
    "fastproxy.worker": 4, "fastproxy.master": 4,
    # L5 entry
    "fastproxy.cli": 5,
}
PURE = {m for m in MODULES if m in LAYERS and LAYERS[m] == 0} | {
    m for m in MODULES if m.startswith("fastproxy.http.")}
FORBIDDEN = {"socket", "selectors", "signal", "select", "subprocess", "multiprocessing"}
ENGINE_BUDGET = 500   # lines, for modules of the HTTP engine (modes/, http/)
HARD_CAP = 700        # lines, for any module


def layer(module: str) -> int:
    parts = module.split(".")
    while parts:
        name = ".".join(parts)
        if name in LAYERS:
            return LAYERS[name]
        parts.pop()
    raise KeyError(module)


def _source(module: str) -> Path:
    path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.exists() else path.with_suffix("") / "__init__.py"


def _imports(module: str) -> set[str]:
    """Every module named by an import anywhere in ``module`` (TYPE_CHECKING blocks too)."""
    return _imports_in(_source(module).read_text())


def _imports_in(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return names


def test_module_list_is_not_empty() -> None:
    assert "fastproxy.master" in MODULES and "fastproxy.modes.client" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_a_layer(module: str) -> None:
    layer(module)


@pytest.mark.parametrize("module", MODULES)
def test_no_upward_imports(module: str) -> None:
    own = layer(module)
    above = {name for name in _imports(module)
             if name.startswith("fastproxy.") and layer(name) > own}
    assert not above, f"{module} (layer {own}) imports from above: {sorted(above)}"


def test_imports_under_type_checking_are_seen() -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    from fastproxy.worker import Worker\n")
    assert "fastproxy.worker" in _imports_in(source)
    assert layer("fastproxy.worker") > layer("fastproxy.modes.client")


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_module_has_no_io_imports(module: str) -> None:
    imported = _imports(module)
    assert not (imported & FORBIDDEN), f"{module} imports {imported & FORBIDDEN}"


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_module_does_not_fork(module: str) -> None:
    assert "os.fork" not in _source(module).read_text()


@pytest.mark.parametrize("module", MODULES)
def test_module_size(module: str) -> None:
    lines = len(_source(module).read_text().splitlines())
    engine = module.startswith(("fastproxy.modes", "fastproxy.http"))
    assert lines <= (ENGINE_BUDGET if engine else HARD_CAP), f"{module}: {lines} lines"


def test_importing_the_package_has_no_side_effects() -> None:
    code = "import sys, fastproxy; print(sorted(m for m in sys.modules if m.startswith('fastproxy')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "['fastproxy']"
