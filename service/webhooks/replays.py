"""Pending replays: one at a time per subscription.

A replay re-sends up to MAX_REPLAY deliveries, in batches of RQ `send` jobs. While its batches
are still to run, another replay of the same subscription is refused (409): repeating the call
cannot multiply the POSTs a receiver gets. The marker expires on its own after `PENDING_S`, so a
batch lost with a killed worker blocks nothing for long.

  kr:replay:{sub}   hash {id, left}: the pending replay and how many batches it has left
"""

from __future__ import annotations

from redis import Redis

from service.store import PREFIX

PENDING_S = 900

# KEYS[1]: the marker. ARGV: replay id, expiry. 1 if this replay now holds it, 0 if one is pending.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'left', -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: the marker. ARGV: replay id, batches (ARGV[2] > 0: it has that many left; 0: one ran).
_COUNT = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
local left
if tonumber(ARGV[2]) > 0 then
  left = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'left', left)
else
  left = redis.call('HINCRBY', KEYS[1], 'left', -1)
end
if left <= 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


def replay_key(sub_id: str) -> str:
    return f"{PREFIX}:replay:{sub_id}"


class PendingReplays:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._begin = redis.register_script(_BEGIN)
        self._count = redis.register_script(_COUNT)

    def begin(self, sub_id: str, replay_id: str) -> bool:
        """Hold the subscription's replay slot; False while another replay is pending."""
        return bool(self._begin(keys=[replay_key(sub_id)], args=[replay_id, PENDING_S]))

    def sending(self, sub_id: str, replay_id: str, batches: int) -> None:
        """The replay was prepared: `batches` send jobs are on their way (0: nothing to send)."""
        if batches <= 0:
            self.end(sub_id, replay_id)
        else:
            self._count(keys=[replay_key(sub_id)], args=[replay_id, batches])

    def batch_done(self, sub_id: str, replay_id: str) -> None:
        self._count(keys=[replay_key(sub_id)], args=[replay_id, 0])

    def end(self, sub_id: str, replay_id: str) -> None:
        """Give the slot up (nothing to send, or the replay was refused after all)."""
        self.redis.eval(
            "if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1, replay_key(sub_id), replay_id,
        )
