"""The event outbox: a dispatcher killed with entries in flight loses none of them."""

from __future__ import annotations

from redis import Redis

from service import outbox
from service.jobs import Jobs
from service.redis_server import RedisServer
from workers.dispatch import Dispatcher, requeue_orphans


def test_dispatcher_turns_a_batch_of_entries_into_one_fan_out_job(redis_server: RedisServer) -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/15")
    redis.flushdb()
    for i in range(5):
        outbox.push(redis, f"task_{i}", f"evt_{i}")
    jobs = Jobs(redis)
    assert Dispatcher(redis, jobs).step(block_s=0.1) == 5
    [job] = jobs.queue("deliver").get_jobs()
    assert job.args == ([f"task_{i} evt_{i}" for i in range(5)],)
    assert redis.llen(outbox.OUTBOX) == 0


def test_entries_of_a_dead_dispatcher_go_back_to_the_outbox_in_order(redis_server: RedisServer) -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/15")
    redis.flushdb()
    for i in range(3):
        outbox.push(redis, f"task_{i}", f"evt_{i}")
    dead = Dispatcher(redis, Jobs(redis))
    redis.lmove(outbox.OUTBOX, dead.inflight, "LEFT", "RIGHT")  # it took one entry, then died
    assert requeue_orphans(redis) == 1
    assert [outbox.parse(e) for e in redis.lrange(outbox.OUTBOX, 0, -1)] == [(f"task_{i}", f"evt_{i}") for i in range(3)]
    live = Dispatcher(redis, Jobs(redis))
    redis.set(live.heartbeat, "1")
    redis.lmove(outbox.OUTBOX, live.inflight, "LEFT", "RIGHT")
    assert requeue_orphans(redis) == 0  # a live dispatcher's entries stay with it
