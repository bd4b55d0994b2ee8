"""Pending replays: one at a time per subscription.

A replay re-sends up to MAX_REPLAY deliveries, in batches of RQ `send` jobs. While its batches
are still to run, another replay of the same subscription is refused (409): repeating the call
cannot multiply the POSTs a receiver gets. The marker expires on its own after `PENDING_S`, so a
batch lost with a killed worker blocks nothing for long.

The marker: `service.keys.replay_key`, a hash {id, left}: the pending replay and how many batches
it has left.
"""

from __future__ import annotations

from redis import Redis

from service.keys import replay_key
from service.scripts import load

PENDING_S = 900


class BeginReplay:
    """`replay_begin.lua`: take the marker `marker` for `replay_id` for `expire_s` seconds;
    False while another replay holds it."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "replay_begin")

    def __call__(self, *, marker: str, replay_id: str, expire_s: int) -> bool:
        return bool(self._script(keys=[marker], args=[replay_id, expire_s]))


class CountReplay:
    """`replay_count.lua`: while `marker` is `replay_id`'s, set its batches left (`batches` > 0)
    or count one down (0), and release it at none; False if it was not this replay's."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "replay_count")

    def __call__(self, *, marker: str, replay_id: str, batches: int) -> bool:
        return bool(self._script(keys=[marker], args=[replay_id, batches]))


class EndReplay:
    """`replay_end.lua`: release `marker` if it is still `replay_id`'s; False if it was not."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "replay_end")

    def __call__(self, *, marker: str, replay_id: str) -> bool:
        return bool(self._script(keys=[marker], args=[replay_id]))


class PendingReplays:
    def __init__(self, redis: Redis) -> None:
        self._begin = BeginReplay(redis)
        self._count = CountReplay(redis)
        self._end = EndReplay(redis)

    def begin(self, sub_id: str, replay_id: str) -> bool:
        """Hold the subscription's replay slot; False while another replay is pending."""
        return self._begin(marker=replay_key(sub_id), replay_id=replay_id, expire_s=PENDING_S)

    def sending(self, sub_id: str, replay_id: str, batches: int) -> None:
        """The replay was prepared: `batches` send jobs are on their way (0: nothing to send)."""
        if batches <= 0:
            self.end(sub_id, replay_id)
        else:
            self._count(marker=replay_key(sub_id), replay_id=replay_id, batches=batches)

    def batch_done(self, sub_id: str, replay_id: str) -> None:
        self._count(marker=replay_key(sub_id), replay_id=replay_id, batches=0)

    def end(self, sub_id: str, replay_id: str) -> None:
        """Give the slot up (nothing to send, or the replay was refused after all)."""
        self._end(marker=replay_key(sub_id), replay_id=replay_id)
