"""Every Lua script file is used (by a wrapper's `load`/`source`, or included by another script),
and every script a wrapper names exists and reads with its includes resolved."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.scripts import source

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "service" / "scripts"
NAMED = re.compile(r"""\b(?:load\(\s*[\w.]+,\s*|source\()"(\w+)"\)""")
INCLUDED = re.compile(r"^-- #include (\w+)$", re.MULTILINE)


def _named_in_code() -> set[str]:
    code = [*ROOT.joinpath("service").rglob("*.py"), *ROOT.joinpath("workers").rglob("*.py")]
    return {name for path in code for name in NAMED.findall(path.read_text(encoding="utf-8"))}


def _included() -> set[str]:
    return {name for path in SCRIPTS.glob("*.lua") for name in INCLUDED.findall(path.read_text(encoding="utf-8"))}


def test_every_script_file_is_used() -> None:
    files = {path.stem for path in SCRIPTS.glob("*.lua")}
    assert files == _named_in_code() | _included()


@pytest.mark.parametrize("name", sorted(_named_in_code()))
def test_every_named_script_exists_with_its_includes_resolved(name: str) -> None:
    text = source(name)
    assert not INCLUDED.search(text)
    # Its header says what it makes atomic and how KEYS and ARGV are laid out.
    assert text.startswith("--") and "KEYS" in text and "Returns" in text
