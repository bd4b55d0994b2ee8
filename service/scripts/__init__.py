"""The Lua scripts, one `.lua` file each beside this module, read once per process.

Each script's header comment says what it makes atomic and how its KEYS and ARGV are laid out;
the typed Python wrapper that calls it lives with the store that owns its keys.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def source(name: str) -> str:
    """The text of `service/scripts/{name}.lua`."""
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
