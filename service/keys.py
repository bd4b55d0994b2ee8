"""Every Redis key name of the relay, in one place: the only module that spells `kr:`.

Each name says its Redis type, the module that owns (writes) it and its TTL; docs/architecture.md
has the same table with who reads what. RQ's own keys (`rq:`) are RQ's business.
"""

from __future__ import annotations

import hashlib

from service.domain.status import TaskStatus

PREFIX = "kr"

# --- tasks (service/store.py) -------------------------------------------------------------------


def task_key(task_id: str) -> str:
    """String (JSON), the task; TaskStore; no TTL while unfinished, TASK_RETENTION_S once terminal."""
    return f"{PREFIX}:task:{task_id}"


def events_key(subject_id: str) -> str:
    """List (JSON), a task's (or subscription's) events in order; TaskStore / SubscriptionStore;
    expires with its task (a subscription's: after its event TTL). A test event is kept under its
    sample's own id (`task_test_…`, `sub_test_…`) by DeliveryStore.create_test, WEBHOOK_LOG_TTL_S."""
    return f"{PREFIX}:events:{subject_id}"


def index_key(status: TaskStatus | None, owner: str | None = None) -> str:
    """Sorted set (lex), task ids by creation, everyone's or one owner's, all or one status;
    TaskStore; no TTL, trimmed by the sweep after TASK_RETENTION_S."""
    scope = f"{owner}:" if owner else ""
    return f"{PREFIX}:idx:{scope}{status.value if status else 'all'}"


# Set, the key ids that own tasks (whose indexes the retention trim walks); TaskStore; no TTL.
OWNERS = f"{PREFIX}:owners"


def idempotency_key(owner: str, key: str) -> str:
    """String, one API key's (by key id) Idempotency-Key claim → task id + body fingerprint;
    TaskStore.create; IDEMPOTENCY_TTL_S. Another key's same header is its own."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{PREFIX}:idem:{owner}:{digest}"


# Sorted set, task id → when the sweep should look again; TaskStore; entries removed when done.
WATCHDOG = f"{PREFIX}:watchdog"


def submit_lease_key(task_id: str) -> str:
    """String (token), held and renewed by the running submit job; workers/lease.py; SUBMIT_LEASE_S."""
    return f"{PREFIX}:lease:submit:{task_id}"


def confirm_key(task_id: str) -> str:
    """String, set while a confirmation poll for the task is pending (one at a time, however many
    terminal callbacks arrive); Runtime.request_confirmation; JOB_GRACE_S."""
    return f"{PREFIX}:confirm:{task_id}"


def poll_chain_key(task_id: str) -> str:
    """String, job id of the task's next scheduled poll: only it schedules the one after;
    workers/poll.py; its delay + JOB_GRACE_S."""
    return f"{PREFIX}:pollchain:{task_id}"


def poll_count_key(task_id: str) -> str:
    """Hash, `n` polls so far, `seen` last time seen unfinished; workers/poll.py;
    deadline + late window + 1 h."""
    return f"{PREFIX}:polls:{task_id}"


# --- live streams (service/live/) ---------------------------------------------------------------

# Stream, every event as it is written, by reference (fields o owner, s subject, i event id; the
# JSON stays in `events_key`), for the web's one reader per process and admins' resumes;
# transitions and subscription disabling; no TTL, capped at STREAM_GLOBAL_EVENTS entries (MAXLEN ~).
EVENT_LOG = f"{PREFIX}:evlog"


def event_log_key(owner: str) -> str:
    """Stream, one API key's events as references (fields s subject, i event id; the JSON stays in
    `events_key`), for resuming `/v1/events/stream`; transitions and subscription disabling;
    STREAM_HISTORY_S after its last event, capped at STREAM_HISTORY_EVENTS entries (MAXLEN ~)."""
    return f"{EVENT_LOG}:{owner}"


# --- the outbox (service/outbox.py, workers/dispatch.py) ----------------------------------------

# List, "{subject id} {event id}" entries waiting for fan-out; transitions (service/outbox.py); no TTL.
OUTBOX = f"{PREFIX}:outbox"
# List, entries whose fan-out failed twice for a reason other than Redis; workers/dispatch.py; no
# TTL. `LMOVE kr:outbox:dead kr:outbox LEFT RIGHT` puts one back.
OUTBOX_DEAD = f"{PREFIX}:outbox:dead"
INFLIGHT_PREFIX = f"{PREFIX}:outbox:inflight:"


def inflight_key(dispatcher: str) -> str:
    """List, the entries a dispatcher is fanning out; workers/dispatch.py; no TTL (the sweep
    returns it to the outbox once the dispatcher's heartbeat is gone)."""
    return f"{INFLIGHT_PREFIX}{dispatcher}"


def heartbeat_key(dispatcher: str) -> str:
    """String, a dispatcher's heartbeat; workers/dispatch.py; WEBHOOK_LEASE_S."""
    return f"{PREFIX}:outbox:dispatcher:{dispatcher}"


# --- subscriptions (service/webhooks/store.py) --------------------------------------------------


def subscription_key(sub_id: str) -> str:
    """String (JSON), a subscription, secrets included; SubscriptionStore; no TTL."""
    return f"{PREFIX}:sub:{sub_id}"


# Sorted set (lex), every subscription id by creation; SubscriptionStore; no TTL.
SUBSCRIPTIONS = f"{PREFIX}:subs"
# String, replaced with every subscription change, so fan-out can cache the set; SubscriptionStore;
# no TTL.
SUBSCRIPTIONS_VERSION = f"{PREFIX}:subs:version"


def owner_subscriptions_key(owner: str) -> str:
    """Sorted set (lex), one API key's subscription ids; SubscriptionStore; no TTL."""
    return f"{SUBSCRIPTIONS}:{owner}"


def failing_key(sub_id: str) -> str:
    """String, start of the subscription's current run of failed attempts; SubscriptionStore;
    2 × WEBHOOK_DISABLE_AFTER_S, deleted on success."""
    return f"{PREFIX}:subfail:{sub_id}"


def subscription_health_key(sub_id: str) -> str:
    """Hash, the subscription's recent health: `success_at` (its last successful attempt),
    `streak` (failed attempts since), `failure_at` and `failure` (its last failed attempt and its
    answer), times in Unix seconds; delivery recording; WEBHOOK_LOG_TTL_S after its last attempt,
    deleted with the subscription."""
    return f"{PREFIX}:subhealth:{sub_id}"


def default_secret_key(owner: str | None) -> str:
    """String, the secret signing deliveries to an API key's tasks' own `webhook_url` (no owner:
    tasks from before ownership); SubscriptionStore; no TTL."""
    default = f"{PREFIX}:whsec:default"
    return f"{default}:{owner}" if owner else default


# --- deliveries (service/webhooks/deliveries.py, replays.py) ------------------------------------


def delivery_key(dlv_id: str) -> str:
    """String (JSON), a delivery and its attempt log; DeliveryStore; WEBHOOK_LOG_TTL_S after its
    last change."""
    return f"{PREFIX}:dlv:{dlv_id}"


def deliveries_index_key(sub_id: str) -> str:
    """Sorted set (lex), a subscription's delivery ids (ids sort by event time); DeliveryStore;
    WEBHOOK_LOG_TTL_S after its newest delivery."""
    return f"{PREFIX}:sub:{sub_id}:dlvs"


# Sorted set, pending delivery id → deadline of its next attempt (the sweep re-sends what is
# overdue); DeliveryStore; entries removed when final.
DELIVERIES_DUE = f"{PREFIX}:dlvdue"


def delivery_lease_key(dlv_id: str, attempt: int) -> str:
    """String, the attempt with that number is claimed; DeliveryStore; the attempt's lease, left to
    expire (never deleted, so a stale copy cannot claim it again)."""
    return f"{PREFIX}:dlvlease:{dlv_id}:{attempt}"


# Sorted set (lex), every event fanned out ("{event id}|{subject id}|{type}|{owner}"), for
# replays; DeliveryStore; trimmed to WEBHOOK_LOG_TTL_S.
EVENT_INDEX = f"{PREFIX}:evidx"


def replay_key(sub_id: str) -> str:
    """Hash {id, left}, a subscription's pending replay and its batches left; PendingReplays;
    15 min (PENDING_S)."""
    return f"{PREFIX}:replay:{sub_id}"


# --- stored videos (service/storage, workers/store_video.py) -------------------------------------

# Sorted set, task id → deadline of its pending storage try (the job's run, or its scheduled
# retry, plus JOB_GRACE_S); the sweep gives an overdue task a new job. Written with the success
# transition, pushed forward by each try; entry removed once stored or given up on.
STORAGE_DUE = f"{PREFIX}:storage:due"
# Sorted set, task id → when its stored copy is deleted (STORAGE_RETENTION_S after it was kept);
# the store job; the sweep deletes due copies and their entries.
STORED = f"{PREFIX}:stored"
# String, one worker cleans up stored copies at a time; workers/store_video.py; SWEEP_INTERVAL_S.
STORAGE_SWEEP_LOCK = f"{PREFIX}:lock:storagesweep"


# --- rate limits, locks -------------------------------------------------------------------------


def ratelimit_key(action: str, key_id: str) -> str:
    """Sorted set, one API key's (by key id: the key itself is written nowhere) recent uses of
    `action`; service/ratelimit.py; the window."""
    return f"{PREFIX}:ratelimit:{action}:{key_id}"


# String, one worker sweeps tasks at a time; workers/sweep.py; SWEEP_INTERVAL_S.
SWEEP_LOCK = f"{PREFIX}:lock:sweep"
# String, one worker sweeps deliveries at a time; workers/deliver.py; SWEEP_INTERVAL_S.
DELIVERY_SWEEP_LOCK = f"{PREFIX}:lock:dlvsweep"
# String (holder name), one worker moves scheduled jobs; workers/main.py; 5 s, refreshed by its holder.
SCHEDULER_LOCK = f"{PREFIX}:lock:scheduler"
