"""Poll timing (pure): start fast, grow geometrically to a cap, honour the provider's ETA, add jitter."""

from __future__ import annotations

import random


def poll_delay(
    poll_number: int,
    *,
    initial_s: float,
    factor: float,
    max_s: float,
    eta_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until poll number `poll_number + 1` (1-based: the delay after the first poll).

    Jitter (±10%) keeps many tasks submitted together from polling the provider in lockstep.
    An ETA longer than our schedule is believed (no point asking before), but still capped.
    """
    base = min(initial_s * factor ** max(poll_number - 1, 0), max_s)
    if eta_s is not None and eta_s > base:
        base = min(eta_s, max_s)
    jitter = (rng or random).uniform(0.9, 1.1)
    return round(base * jitter, 3)
