"""The event outbox: events waiting to be fanned out to subscribers.

A transition pushes its event here inside its own atomic write (a tiny RPUSH, instead of building
an RQ job on the callback hot path). Each worker's dispatcher thread takes entries in batches and
fans them out; an entry sits in the dispatcher's in-flight list until its first attempts are
recorded, so a dispatcher killed halfway loses nothing (the sweep puts its list back).
"""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

OUTBOX = "kr:outbox"
INFLIGHT_PREFIX = "kr:outbox:inflight:"
HEARTBEAT_PREFIX = "kr:outbox:dispatcher:"
# Entries whose fan-out failed twice for a reason other than Redis (a bug, a corrupt event), set
# aside so they hold up nothing; the error is logged. `LMOVE kr:outbox:dead kr:outbox LEFT RIGHT`
# puts one back.
DEAD = "kr:outbox:dead"


def entry(subject_id: str, event_id: str) -> str:
    return f"{subject_id} {event_id}"


def parse(raw: bytes | str) -> tuple[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    subject_id, _, event_id = text.partition(" ")
    return subject_id, event_id


def push(pipe: Pipeline | Redis, subject_id: str, event_id: str) -> None:
    pipe.rpush(OUTBOX, entry(subject_id, event_id))


# Move up to ARGV[1] more entries from the outbox to the in-flight list; returns those moved.
TAKE_MORE = """
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not entry then break end
  taken[i] = entry
end
return taken
"""

# Put a dead dispatcher's in-flight entries back at the head of the outbox, in order.
RETURN_INFLIGHT = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""
