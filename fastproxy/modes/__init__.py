"""One connection handler per listener mode (glue: reactor + protocol + relay)."""

from __future__ import annotations

from fastproxy.config import Config
from fastproxy.errors import ConfigError, format_problem

# Modes this build can serve; the others are accepted by the config schema
# (they are part of the contract) but refused at run/reload time.
AVAILABLE = frozenset({"tcp", "http", "forward"})


def require_available(cfg: Config) -> None:
    """Raise ConfigError for each listener whose mode is not available."""
    problems = [
        format_problem(f"listener[{i}].mode",
                       f"mode {lst.mode!r} is not available in this version "
                       f"(available: {', '.join(sorted(AVAILABLE))})")
        for i, lst in enumerate(cfg.listeners) if lst.mode not in AVAILABLE
    ]
    if problems:
        raise ConfigError(problems)
