"""The request corpus (tests/http/corpus): every case parsed whole, byte by byte and
in small pieces must give the expected completed messages and error status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastproxy.http import Limits
from tests.http.corpus import make_corpus
from tests.http.helpers import completed, matches, run

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(p.with_suffix("") for p in CORPUS.glob("*/*.http"))
IDS = [f"{p.parent.name}/{p.name}" for p in CASES]


def load(stem: Path) -> tuple[bytes, dict[str, Any]]:
    return stem.with_suffix(".http").read_bytes(), json.loads(stem.with_suffix(".json").read_text())


def check(stem: Path, step: int | None) -> None:
    raw, expect = load(stem)
    outcome = run(raw, Limits(**expect["limits"]), step=step, eof=expect["eof"])
    got = completed(outcome)
    assert outcome.status == expect["status"], (expect["description"], outcome.status)
    assert len(got) == len(expect["messages"]), (expect["description"], got)
    for want, actual in zip(expect["messages"], got):
        assert matches(want, actual), (expect["description"], want, actual)


def test_corpus_files_match_the_generator() -> None:
    files = make_corpus.rendered()
    on_disk = {str(p.relative_to(CORPUS)): p.read_bytes()
               for category in ("valid", "invalid", "smuggling")
               for p in (CORPUS / category).glob("*.*")}
    assert on_disk == files, "run python tests/http/corpus/make_corpus.py"


def test_corpus_is_large_enough() -> None:
    counts = {c: len(list((CORPUS / c).glob("*.http"))) for c in ("valid", "invalid", "smuggling")}
    assert sum(counts.values()) >= 80 and all(counts.values()), counts


@pytest.mark.parametrize("stem", CASES, ids=IDS)
def test_case_whole(stem: Path) -> None:
    check(stem, None)


@pytest.mark.parametrize("stem", CASES, ids=IDS)
def test_case_byte_by_byte(stem: Path) -> None:
    check(stem, 1)


@pytest.mark.parametrize("step", [2, 3, 7, 64])
def test_cases_in_pieces(step: int) -> None:
    for stem in CASES:
        check(stem, step)


@pytest.mark.parametrize("stem", [s for s in CASES if s.parent.name != "valid"], ids=lambda s: s.name)
def test_bad_case_errors_before_forwarding_anything_bad(stem: Path) -> None:
    """The error comes with exactly the expected good messages before it: none of
    the offending request's own body is delivered as a completed message."""
    raw, expect = load(stem)
    outcome = run(raw, Limits(**expect["limits"]), eof=expect["eof"])
    if expect["status"] is not None:
        assert len(completed(outcome)) == len(expect["messages"])
