"""A fan-out batch: outbox entries from the moment a dispatcher takes them until their first
attempts are recorded.

    TAKEN ──(fan-out starts its first attempts)──► SENDING ──► RELEASED
      │                                               │
      └──────────(fan-out or a record failed)─────────┴──────► HANDED_BACK

Its entries sit in the dispatcher's in-flight list the whole time. The batch counts its first
attempts as they land and are recorded (on the engine's recorder thread); the record of the last
of them carries the batch's `Release`, so the entries leave the list in the same atomic write. If
any record failed, the batch is handed back to its dispatcher instead, which sends again whatever
was never recorded. A batch ends exactly once.
"""

from __future__ import annotations

import queue
import threading
from enum import StrEnum

from service.webhooks.deliveries import IndexedEvent
from service.webhooks.planner import Release


class BatchState(StrEnum):
    TAKEN = "taken"
    SENDING = "sending"
    RELEASED = "released"
    HANDED_BACK = "handed_back"


HandedBack = queue.SimpleQueue["FanOutBatch"]


class FanOutBatch:
    def __init__(self, entries: list[str], inflight: str, handed_back: HandedBack, *, suspect: bool = False) -> None:
        self.entries = entries
        # The dispatcher's in-flight list, which holds the entries until the batch is released.
        self.inflight = inflight
        # Going again alone, after failing in a batch for a reason other than Redis.
        self.suspect = suspect
        self.state = BatchState.TAKEN
        self.events: list[IndexedEvent] = []
        # First attempts started and not recorded yet.
        self.outstanding = 0
        # Why it is handed back (the first failure).
        self.error: BaseException | None = None
        self._handed_back = handed_back
        # The dispatcher (its fan-out failed) and the recorder (a record failed) may both try.
        self._ending = threading.Lock()

    def __repr__(self) -> str:
        return f"FanOutBatch({len(self.entries)} entries, {self.state.value}, outstanding={self.outstanding})"

    def sending(self, events: list[IndexedEvent], attempts: int) -> None:
        """Its fan-out matched `events` to subscribers and starts `attempts` first attempts."""
        self.events = events
        self.outstanding = attempts
        self.state = BatchState.SENDING

    def landed(self, attempts: int) -> Release | None:
        """Count `attempts` first attempts as landed, about to be recorded; returns the release
        to write with them when they are the batch's last and every earlier record was written."""
        self.outstanding -= attempts
        if self.outstanding == 0 and self.error is None:
            return Release(self.inflight, self.entries, self.events)
        return None

    def recorded(self, error: BaseException | None = None) -> None:
        """A record of its landed attempts was written (or failed with `error`). With its last
        attempt's, the batch ends: released if every record was written, else handed back."""
        if error is not None and self.error is None:
            self.error = error
        if self.outstanding > 0:
            return
        if self.error is not None:
            self.hand_back(self.error)
            return
        with self._ending:
            if self.state is BatchState.SENDING:
                self.state = BatchState.RELEASED

    def hand_back(self, error: BaseException) -> None:
        """Its fan-out or recording failed: back to the dispatcher, its entries still in flight."""
        with self._ending:
            if self.state in (BatchState.RELEASED, BatchState.HANDED_BACK):
                return
            self.error = error
            self.state = BatchState.HANDED_BACK
        self._handed_back.put(self)
