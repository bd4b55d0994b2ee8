"""A subscription as shown: what the API returns, and the `data` of a `subscription.disabled` event.

The stored model (`service.webhooks.models.Subscription`) adds its signing secrets, which are
never shown; keeping the view here lets the event catalog describe that event without the
webhook package.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class SubscriptionView(BaseModel):
    # Published as "Subscription": the API's name for this view (the stored model has the same).
    model_config = ConfigDict(title="Subscription")

    id: str
    # The id of the API key that created it (see Task.owner); it receives that key's events only.
    owner: str | None = None
    url: str
    event_types: list[str]
    description: str | None = None
    metadata: dict[str, Any] | None = None
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_at: str | None = None
    created_at: str
    updated_at: str
