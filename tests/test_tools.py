"""The shipped examples stay valid: the Kubernetes ConfigMap's configuration
passes ``fastproxy check`` and the units name commands that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fastproxy.cli import _parser

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def configmap_toml() -> str:
    lines = (TOOLS / "kubernetes" / "configmap.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "fastproxy.toml: |") + 1
    return "\n".join(line[4:] for line in lines[start:] if line.startswith("    ") or not line)


def test_the_kubernetes_configuration_passes_check(tmp_path: Path) -> None:
    path = tmp_path / "fastproxy.toml"
    path.write_text(configmap_toml())
    result = subprocess.run([sys.executable, "-m", "fastproxy", "check", "-c", str(path)],
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()


def test_the_units_use_existing_commands() -> None:
    commands = set(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = []
    for path in [*(TOOLS / "systemd").iterdir(), TOOLS / "logrotate" / "fastproxy",
                 TOOLS / "kubernetes" / "deployment.yaml"]:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            used += re.findall(r'(?:/usr/bin/fastproxy|"fastproxy",?|; fastproxy) "?([a-z]+)', line)
    assert {"run", "check", "reload", "quit", "reopen"} <= set(used), used
    assert set(used) <= commands, used
