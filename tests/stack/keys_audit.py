"""Every key in Redis has a live owner or a TTL: nothing is left behind forever.

Each of our key patterns is either a standing structure of the service (an index, the outbox),
owned by another key (a subscription's delivery index by the subscription), or expires. A key
with no TTL whose owner is gone, or whose pattern nobody declared here, is an orphan: it would
stay in Redis forever. RQ's own keys (`rq:*`) are RQ's to manage and are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from redis import Redis

# Keys that stand for the whole service (no owner, no TTL).
STANDING = re.compile(
    r"^kr:(idx:.+|owners|watchdog|outbox|outbox:dead|evidx|evlog|dlvdue|storage:due|stored|subs|subs:version|subs:[0-9a-f]{16}|whsec:default(:[0-9a-f]{16})?)$"
)
# Keys owned by another: pattern → the owner key(s), any of which keeps it alive.
OWNED: list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]] = [
    (re.compile(r"^kr:events:(.+)$"), lambda m: [f"kr:task:{m[1]}", f"kr:sub:{m[1]}"]),
    (re.compile(r"^kr:sub:(sub_[^:]+):dlvs$"), lambda m: [f"kr:sub:{m[1]}"]),
    (re.compile(r"^kr:outbox:inflight:(.+)$"), lambda m: [f"kr:outbox:dispatcher:{m[1]}"]),
]
# Primary records: they own themselves while they exist (a finished task gets a TTL).
PRIMARY = re.compile(r"^kr:(task:task_[^:]+|sub:sub_[^:]+)$")


def orphans(redis: Redis) -> list[str]:
    """Keys with no TTL whose owner is gone, or whose pattern is not declared above."""
    found = []
    for raw in redis.scan_iter(match="kr:*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if redis.ttl(key) != -1 or STANDING.match(key) or PRIMARY.match(key):
            continue  # expires (or just went), or stands on its own
        owners = next((owner(m) for pattern, owner in OWNED if (m := pattern.match(key))), None)
        if owners is None or not any(redis.exists(o) for o in owners):
            found.append(key)
    return sorted(found)
