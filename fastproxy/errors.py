"""Exceptions that cross module boundaries.

Rule: an error says *what* went wrong, *who* is at fault (client, upstream or
internal) and whether a retry may help, as attributes, so callers map errors
to actions and HTTP statuses without an ``isinstance`` ladder.
"""

from __future__ import annotations

import enum


class ConfigError(Exception):
    """One or more problems in a configuration.

    ``problems`` holds one line per problem, each already in the user-facing
    form ``config error: <dotted.key>: <message>``.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    @classmethod
    def one(cls, key: str, message: str) -> ConfigError:
        return cls([format_problem(key, message)])


def format_problem(key: str, message: str) -> str:
    """The single user-facing line for one configuration problem."""
    return f"config error: {key}: {message}" if key else f"config error: {message}"


class Side(enum.Enum):
    CLIENT = "client"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class ProxyError(Exception):
    """A failure on one connection; ``status`` is the HTTP status it maps to."""

    status: int = 502
    side: Side = Side.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None,
                 side: Side | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if side is not None:
            self.side = side
        if retryable is not None:
            self.retryable = retryable


class ProtocolError(ProxyError):
    """The client sent bytes that break the protocol (bad framing, limits)."""

    status = 400
    side = Side.CLIENT


class UpstreamError(ProxyError):
    """The upstream could not be reached or answered badly."""

    status = 502
    side = Side.UPSTREAM
