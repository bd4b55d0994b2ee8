"""The Lua scripts, one `.lua` file each beside this module, read once per process.

Each script's header comment says what it makes atomic and how its KEYS and ARGV are laid out;
the typed Python wrapper that calls it lives with the store that owns its keys.

One include, for code two scripts share: a line `-- #include NAME` is replaced by the text of
`NAME.lua` (itself read with `source`, so includes nest). It is plain text substitution: the
included file defines local functions, and the including script calls them.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from redis import Redis
from redis.commands.core import Script

_INCLUDE = re.compile(r"^-- #include (\w+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of `service/scripts/{name}.lua`, with its includes in place."""
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: source(match[1]), text)


def load(redis: Redis, name: str) -> Script:
    """The script `name` on this client: run by its SHA, loaded on first use."""
    return redis.register_script(source(name))
