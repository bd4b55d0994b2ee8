"""Each Lua script through its typed wrapper, against a real redis-server: what it makes atomic,
and the return values its header documents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from service import outbox
from service.cas import (
    CompareAndSet,
    Recorder,
    RecordingOnly,
    recorded,
    spelled,
)
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskInput, TaskResult
from service.domain.transition import ProviderUpdate, Transition, apply_update
from service.jobs import POLL, Jobs
from service.keys import (
    DELIVERIES_DUE,
    EVENT_LOG,
    OUTBOX,
    STORAGE_DUE,
    WATCHDOG,
    deliveries_index_key,
    delivery_key,
    delivery_lease_key,
    event_log_key,
    events_key,
    index_key,
    inflight_key,
    task_key,
)
from service.live.log import LogLimits
from service.outbox import ReturnInflight, TakeMore
from service.ratelimit import TakeSlot
from service.redis_client import connect_redis
from service.redis_server import RedisServer
from service.settings import load_settings
from service.store import WriteTransition
from service.webhooks.deliveries import (
    Attempted,
    ClaimAttempts,
    CreateDeliveries,
    IndexedEvent,
    RestartDelivery,
    Restarted,
    SaveAttempts,
    Target,
    new_deliveries,
)
from service.webhooks.models import Delivery, Subscription
from service.webhooks.policy import DeliveryStatus, DisableReason
from service.webhooks.replays import BeginReplay, CountReplay, EndReplay
from service.webhooks.store import SubscriptionStore
from workers.lease import ReleaseLease, RenewLease
from workers.main import HoldLock

DB = 13


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=DB)
    client.flushdb()
    yield client
    client.flushdb()


def _texts(values: list[bytes]) -> list[str]:
    return [v.decode() for v in values]


# --- cas.lua ------------------------------------------------------------------------------------


def test_cas_runs_every_command_while_the_guard_holds(redis: Redis) -> None:
    redis.set("guard", "v1")
    cas = CompareAndSet(redis)
    assert cas("guard", b"v1", spelled(("SET", "guard", "v2"), ("RPUSH", "log", "a", "b"), ("SET", "other", "x")))
    assert redis.get("guard") == b"v2" and redis.lrange("log", 0, -1) == [b"a", b"b"] and redis.get("other") == b"x"


def test_cas_runs_nothing_once_the_guard_changed(redis: Redis) -> None:
    redis.set("guard", "v2")
    assert not CompareAndSet(redis)("guard", b"v1", spelled(("SET", "guard", "v3"), ("SET", "other", "x")))
    assert redis.get("guard") == b"v2" and not redis.exists("other")


def test_cas_expecting_none_runs_only_if_the_key_is_absent(redis: Redis) -> None:
    cas = CompareAndSet(redis)
    assert cas("claim", None, spelled(("SET", "claim", "first")))
    assert not cas("claim", None, spelled(("SET", "claim", "second")))
    assert redis.get("claim") == b"first"

# --- transition.lua -----------------------------------------------------------------------------

T0 = "2026-01-01T00:00:00.000Z"
RETENTION_S = 3600


def _stored_task(redis: Redis, status: TaskStatus) -> tuple[Task, bytes]:
    task = Task(id="task_t1", owner="key1", provider="apikley", provider_task_id="p1", status=status,
                input=TaskInput(prompt="p"), created_at=T0, updated_at=T0, sequence=1)
    raw = task.dumps()
    redis.set(task_key(task.id), raw)
    for owner in (None, "key1"):
        redis.zadd(index_key(status, owner), {task.id: 0})
    redis.zadd(WATCHDOG, {task.id: 1})
    return task, raw


def _transition(task: Task, update: ProviderUpdate) -> Transition:
    moved = apply_update(task, update, now="2026-01-01T00:00:01.000Z", event_id="evt_1")
    assert moved is not None
    return moved


def test_a_finishing_transition_writes_everything_and_starts_the_retention(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    done = _transition(task, ProviderUpdate(TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn.example/v.mp4")))
    assert WriteTransition(redis, None, RETENTION_S)(raw, done, spelled(("SET", "kr:test:after", "1")))

    assert redis.get(task_key(task.id)) == done.task.dumps()
    assert redis.lrange(events_key(task.id), 0, -1) == [done.event.dumps()]
    assert redis.lrange(OUTBOX, 0, -1) == [outbox.entry(task.id, "evt_1").encode()]
    for owner in (None, "key1"):
        assert redis.zscore(index_key(TaskStatus.RUNNING, owner), task.id) is None
        assert redis.zscore(index_key(TaskStatus.SUCCEEDED, owner), task.id) == 0
    assert redis.zscore(WATCHDOG, task.id) is None
    assert 0 < redis.ttl(task_key(task.id)) <= RETENTION_S
    assert 0 < redis.ttl(events_key(task.id)) <= RETENTION_S
    assert redis.get("kr:test:after") == b"1"  # what commits with it


def test_a_success_is_due_a_stored_copy_in_its_own_write_when_videos_are_kept(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    done = _transition(task, ProviderUpdate(TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn.example/v.mp4")))
    before = time.time()
    assert WriteTransition(redis, None, RETENTION_S, stores_videos=True)(raw, done, [])
    due = redis.zscore(STORAGE_DUE, task.id)
    assert due is not None and before <= due <= time.time()


def test_no_stored_copy_is_due_without_storage_or_for_a_failure(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    done = _transition(task, ProviderUpdate(TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn.example/v.mp4")))
    assert WriteTransition(redis, None, RETENTION_S)(raw, done, [])  # STORAGE_URL=none
    assert redis.zcard(STORAGE_DUE) == 0
    redis.flushdb()
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    failed = _transition(task, ProviderUpdate(TaskStatus.FAILED))
    assert WriteTransition(redis, None, RETENTION_S, stores_videos=True)(raw, failed, [])
    assert redis.zcard(STORAGE_DUE) == 0


def test_an_unfinished_transition_keeps_the_task_and_its_watchdog(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.SUBMITTED)
    running = _transition(task, ProviderUpdate(TaskStatus.RUNNING, progress=10))
    assert WriteTransition(redis, None, RETENTION_S)(raw, running, [])

    assert redis.get(task_key(task.id)) == running.task.dumps()
    assert redis.zscore(index_key(TaskStatus.RUNNING, "key1"), task.id) == 0
    assert redis.zscore(WATCHDOG, task.id) == 1
    assert redis.ttl(task_key(task.id)) == -1 and redis.ttl(events_key(task.id)) == -1


def test_a_progress_event_moves_no_index(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    progress = _transition(task, ProviderUpdate(TaskStatus.RUNNING, progress=50))
    assert progress.event.type == "task.progress"
    assert WriteTransition(redis, None, RETENTION_S)(raw, progress, [])
    assert redis.zscore(index_key(TaskStatus.RUNNING, "key1"), task.id) == 0
    assert redis.lrange(events_key(task.id), 0, -1) == [progress.event.dumps()]


def test_nothing_is_written_if_the_task_changed_since_it_was_read(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    redis.set(task_key(task.id), task.model_copy(update={"sequence": 2}).dumps())  # another writer won
    done = _transition(task, ProviderUpdate(TaskStatus.FAILED))
    before = {key: redis.dump(key) for key in redis.keys("*")}
    assert not WriteTransition(redis, None, RETENTION_S)(raw, done, spelled(("SET", "kr:test:after", "1")))
    assert {key: redis.dump(key) for key in redis.keys("*")} == before


def _log(redis: Redis, key: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in redis.xrange(key)]


def test_a_transition_joins_the_live_logs_by_reference_in_the_same_write(redis: Redis) -> None:
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    done = _transition(task, ProviderUpdate(TaskStatus.FAILED))
    limits = LogLimits(global_events=100, owner_events=100, owner_ttl_s=600)
    assert WriteTransition(redis, None, RETENTION_S, limits)(raw, done, [])
    assert _log(redis, EVENT_LOG) == [{b"o": b"key1", b"s": task.id.encode(), b"i": b"evt_1"}]
    assert _log(redis, event_log_key("key1")) == [{b"s": task.id.encode(), b"i": b"evt_1"}]
    assert 0 < redis.ttl(event_log_key("key1")) <= 600
    assert redis.ttl(EVENT_LOG) == -1  # capped instead


def test_an_ownerless_tasks_transition_joins_the_global_log_only(redis: Redis) -> None:
    task, _ = _stored_task(redis, TaskStatus.RUNNING)
    ownerless = task.model_copy(update={"owner": None})
    redis.set(task_key(task.id), ownerless.dumps())
    done = _transition(ownerless, ProviderUpdate(TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn.example/v.mp4")))
    assert WriteTransition(redis, None, RETENTION_S)(ownerless.dumps(), done, [])
    assert _log(redis, EVENT_LOG) == [{b"o": b"", b"s": task.id.encode(), b"i": b"evt_1"}]
    assert redis.keys("kr:evlog:*") == []


def test_the_logs_are_capped(redis: Redis) -> None:
    limits = LogLimits(global_events=10, owner_events=10, owner_ttl_s=600)
    for n in range(500):
        task, raw = _stored_task(redis, TaskStatus.SUBMITTED)
        moved = apply_update(task, ProviderUpdate(TaskStatus.RUNNING), now=T0, event_id=f"evt_{n}")
        assert moved is not None
        assert WriteTransition(redis, None, RETENTION_S, limits)(raw, moved, [])
    # Approximate trimming (MAXLEN ~) drops whole nodes: at most a node (100 entries) over.
    assert 10 <= redis.xlen(EVENT_LOG) <= 110 and 10 <= redis.xlen(event_log_key("key1")) <= 110


def test_a_subscription_disabled_event_joins_the_live_logs(redis: Redis) -> None:
    sub = Subscription(id="sub_1", owner="key1", url="https://hooks.example/in", event_types=["*"], created_at=T0, updated_at=T0)
    store = SubscriptionStore(redis, event_ttl_s=600)
    store.create(sub)
    event = store.disable(sub.id, DisableReason.FAILING)
    assert event is not None
    assert redis.lrange(events_key(sub.id), 0, -1) == [event.dumps()]
    assert _log(redis, EVENT_LOG) == [{b"o": b"key1", b"s": b"sub_1", b"i": event.id.encode()}]
    assert _log(redis, event_log_key("key1")) == [{b"s": b"sub_1", b"i": event.id.encode()}]


def test_write_transition_on_the_pipelined_connection(redis_server: RedisServer, redis: Redis) -> None:
    _, aredis = connect_redis(load_settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/{DB}"))
    task, raw = _stored_task(redis, TaskStatus.RUNNING)
    done = _transition(task, ProviderUpdate(TaskStatus.FAILED))
    write = WriteTransition(redis, aredis, RETENTION_S)

    async def main() -> tuple[bool, bool]:
        try:
            return await write.on_async(raw, done, []), await write.on_async(raw, done, [])
        finally:
            await aredis.aclose()

    assert asyncio.run(main()) == (True, False)  # the second read a task that has changed since
    assert redis.get(task_key(task.id)) == done.task.dumps()
    assert redis.lrange(events_key(task.id), 0, -1) == [done.event.dumps()]


def test_a_recorder_captures_rq_enqueues_and_sends_nothing_itself(redis: Redis) -> None:
    jobs = Jobs(redis)
    ids: list[str] = []

    def build(pipe: Pipeline) -> None:
        pipe.set("guard", "1")
        ids.append(jobs.poll("task_now", pipeline=pipe, job_id="poll-now"))
        ids.append(jobs.poll("task_later", delay_s=60, pipeline=pipe, job_id="poll-later"))

    commands = recorded(redis, build)
    assert redis.dbsize() == 0  # recorded, not sent
    assert CompareAndSet(redis)("guard", None, commands)
    assert ids == ["poll-now", "poll-later"]
    assert Queue(POLL, connection=redis).job_ids == ["poll-now"]
    assert Job.fetch("poll-now", connection=redis).args == ("task_now",)
    assert ScheduledJobRegistry(POLL, connection=redis).get_job_ids() == ["poll-later"]


def test_a_recorder_refuses_to_talk_to_redis(redis: Redis) -> None:
    recorder = Recorder(redis)
    recorder.set("k", "v")
    with pytest.raises(RecordingOnly):
        recorder.execute()
    with pytest.raises(RedisError):
        recorder.watch("k")  # no reads in a write that a script runs
    assert recorder.recorded == [("SET", "k", "v")] and redis.dbsize() == 0


# --- take_more.lua, return_inflight.lua ---------------------------------------------------------


def test_take_more_moves_at_most_count_in_order(redis: Redis) -> None:
    redis.rpush(OUTBOX, *"abcde")
    inflight = inflight_key("d1")
    take = TakeMore(redis)
    assert _texts(take(outbox=OUTBOX, inflight=inflight, count=3)) == ["a", "b", "c"]
    assert _texts(redis.lrange(OUTBOX, 0, -1)) == ["d", "e"]
    assert _texts(take(outbox=OUTBOX, inflight=inflight, count=10)) == ["d", "e"]
    assert _texts(redis.lrange(inflight, 0, -1)) == ["a", "b", "c", "d", "e"]
    assert take(outbox=OUTBOX, inflight=inflight, count=10) == []


def test_return_inflight_puts_entries_back_at_the_head_in_order(redis: Redis) -> None:
    inflight = inflight_key("dead")
    redis.rpush(inflight, "a", "b", "c")
    redis.rpush(OUTBOX, "x", "y")  # arrived since
    assert ReturnInflight(redis)(inflight=inflight, outbox=OUTBOX) == 3
    assert _texts(redis.lrange(OUTBOX, 0, -1)) == ["a", "b", "c", "x", "y"]
    assert not redis.exists(inflight)
    assert ReturnInflight(redis)(inflight=inflight, outbox=OUTBOX) == 0


# --- the delivery scripts -----------------------------------------------------------------------

EVENT = IndexedEvent("evt_0mx5h6lgglqkz55jdjuvv831t", "task_a", "task.succeeded", "owner1")


def _deliveries(*subs: str) -> list[Delivery]:
    return new_deliveries(EVENT, [Target(s, subscription_id=s) for s in subs], now=1000.0, created_at="2025-01-01T00:00:00Z")


def _stored(redis: Redis, d: Delivery) -> Delivery | None:
    raw = redis.get(delivery_key(d.id))
    return Delivery.loads(raw) if raw is not None else None


def test_create_deliveries_creates_each_once_and_makes_only_new_ones_due(redis: Redis) -> None:
    a, b = _deliveries("sub_a", "sub_b")
    create = CreateDeliveries(redis)
    assert create(deliveries=[a], ttl_s=600, due_at=1010.0) == [True]
    changed_a = a.model_copy(update={"status": DeliveryStatus.DELIVERED})
    redis.zadd(DELIVERIES_DUE, {a.id: 5.0})  # moved on since: a second create must not touch it
    assert create(deliveries=[changed_a, b], ttl_s=600, due_at=2020.0) == [False, True]
    assert _stored(redis, a) == a  # left as it was
    assert redis.zscore(DELIVERIES_DUE, a.id) == 5.0 and redis.zscore(DELIVERIES_DUE, b.id) == 2020.0
    assert redis.zrange(deliveries_index_key("sub_b"), 0, -1) == [b.id.encode()]
    assert 0 < redis.ttl(delivery_key(b.id)) <= 600


def test_claim_attempts_wins_each_attempt_once(redis: Redis) -> None:
    a, b = _deliveries("sub_a", "sub_b")
    claim = ClaimAttempts(redis)
    redis.set(delivery_lease_key(b.id, b.attempt_count), "1")  # someone is on b's attempt already
    assert claim(deliveries=[a, b], ttl_s=30, due_at=1031.0) == [True, False]
    assert claim(deliveries=[a], ttl_s=30, due_at=1031.0) == [False]
    assert redis.zscore(DELIVERIES_DUE, a.id) == 1031.0 and redis.zscore(DELIVERIES_DUE, b.id) is None
    # The next attempt number is a fresh claim.
    assert claim(deliveries=[a.model_copy(update={"attempt_count": 1})], ttl_s=30, due_at=1031.0) == [True]


def test_save_attempts_writes_first_attempts_only_if_absent_and_sets_deadlines(redis: Redis) -> None:
    first, raced, retrying, final = _deliveries("sub_first", "sub_raced", "sub_retrying", "sub_final")
    # `raced`'s first attempt was recorded by another writer already; `retrying` and `final` are stored.
    redis.set(delivery_key(raced.id), "theirs")
    for d in (retrying, final):
        redis.set(delivery_key(d.id), d.dumps())
        redis.zadd(DELIVERIES_DUE, {d.id: 1.0})
    done = final.model_copy(update={"status": DeliveryStatus.DELIVERED, "attempt_count": 1})
    again = retrying.model_copy(update={"attempt_count": 1})
    then = spelled(("RPUSH", "released", "entry"))
    saved = SaveAttempts(redis)(
        attempted=[
            Attempted(first, due_at=None, first=True),
            Attempted(raced, due_at=3000.0, first=True),
            Attempted(again, due_at=2000.0, first=False),
            Attempted(done, due_at=None, first=False),
        ],
        ttl_s=600,
        then=then,
    )
    assert saved == 4
    assert _stored(redis, first) == first
    assert redis.zrange(deliveries_index_key("sub_first"), 0, -1) == [first.id.encode()]
    assert redis.get(delivery_key(raced.id)) == b"theirs"  # NX: the first writer's stays
    assert redis.zscore(DELIVERIES_DUE, raced.id) is None and not redis.exists(deliveries_index_key("sub_raced"))
    assert _stored(redis, again) == again and redis.zscore(DELIVERIES_DUE, again.id) == 2000.0
    assert _stored(redis, done) == done and redis.zscore(DELIVERIES_DUE, done.id) is None
    assert redis.lrange("released", 0, -1) == [b"entry"]  # the trailing commands ran too


def test_restart_delivery_documents_in_flight_changed_and_restarted(redis: Redis) -> None:
    (d,) = _deliveries("sub_a")
    failed = d.model_copy(update={"status": DeliveryStatus.FAILED, "attempt_count": 3})
    raw = failed.dumps()
    redis.set(delivery_key(d.id), raw)
    restart = RestartDelivery(redis)
    fresh = failed.model_copy(update={"status": DeliveryStatus.PENDING, "round_attempts": 0})

    lease = delivery_lease_key(d.id, 3)
    redis.set(lease, "1")
    assert restart(read=raw, restarted=fresh, ttl_s=600, due_at=50.0) is Restarted.IN_FLIGHT
    redis.delete(lease)
    assert restart(read=b"stale copy", restarted=fresh, ttl_s=600, due_at=50.0) is Restarted.CHANGED
    assert redis.get(delivery_key(d.id)) == raw
    assert redis.zscore(DELIVERIES_DUE, d.id) is None
    assert restart(read=raw, restarted=fresh, ttl_s=600, due_at=50.0) is Restarted.RESTARTED
    assert _stored(redis, d) == fresh and redis.zscore(DELIVERIES_DUE, d.id) == 50.0


# --- ratelimit_take.lua -------------------------------------------------------------------------


def test_take_slot_counts_uses_within_the_window(redis: Redis) -> None:
    take = TakeSlot(redis)
    window_ms = 3_600_000
    assert [take(log="log", limit=2, window_ms=window_ms, member=m)[0] for m in ("a", "b", "c")] == [True, True, False]
    allowed, wait_ms = take(log="log", limit=2, window_ms=window_ms, member="d")
    assert not allowed and 0 < wait_ms <= window_ms
    assert redis.zcard("log") == 2  # refused uses are not recorded
    assert take(log="log", limit=3, window_ms=window_ms, member="e") == (True, 0)


# --- replay_begin.lua, replay_count.lua, replay_end.lua -----------------------------------------


def test_replay_slot_is_held_by_one_replay_and_released_by_its_last_batch(redis: Redis) -> None:
    begin, count, end = BeginReplay(redis), CountReplay(redis), EndReplay(redis)
    assert begin(marker="m", replay_id="r1", expire_s=900)
    assert not begin(marker="m", replay_id="r2", expire_s=900)
    assert not count(marker="m", replay_id="r2", batches=0)  # not r2's: nothing counted
    assert count(marker="m", replay_id="r1", batches=2)
    assert count(marker="m", replay_id="r1", batches=0) and redis.exists("m")
    assert count(marker="m", replay_id="r1", batches=0) and not redis.exists("m")
    assert begin(marker="m", replay_id="r2", expire_s=900)
    assert not end(marker="m", replay_id="r1") and redis.exists("m")
    assert end(marker="m", replay_id="r2") and not redis.exists("m")


# --- hold_lock.lua, lease_renew.lua, lease_release.lua ------------------------------------------


def test_hold_lock_takes_a_free_lock_or_keeps_its_own_only(redis: Redis) -> None:
    hold = HoldLock(redis)
    assert hold(lock="lock", holder="w1", ttl_s=5)
    assert not hold(lock="lock", holder="w2", ttl_s=5)
    redis.expire("lock", 1)
    assert hold(lock="lock", holder="w1", ttl_s=5) and redis.ttl("lock") > 1  # refreshed
    assert redis.get("lock") == b"w1"
    redis.delete("lock")
    assert hold(lock="lock", holder="w2", ttl_s=5) and redis.get("lock") == b"w2"


def test_a_lease_is_renewed_and_released_only_while_ours(redis: Redis) -> None:
    renew, release = RenewLease(redis), ReleaseLease(redis)
    redis.set("lease", "mine", px=1000)
    assert renew(lease="lease", token="mine", ttl_ms=60_000) and redis.pttl("lease") > 1000
    assert not renew(lease="lease", token="theirs", ttl_ms=60_000)
    assert not release(lease="lease", token="theirs") and redis.exists("lease")
    assert release(lease="lease", token="mine") and not redis.exists("lease")
    assert not renew(lease="lease", token="mine", ttl_ms=60_000) and not redis.exists("lease")
