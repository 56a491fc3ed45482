"""Admission lanes from OpenAI's `service_tier`.

`priority` is admitted first and never routed to a cheaper tier; `default` (also `auto`
and `scale`, and a request that names none) is today's behaviour; `flex` waits longer in
admission, is shed first when a queue fills, and is always eligible for cheaper tiers.
`batch` is the Batch API's own lane (never named by a client): admitted last, shed before
anything else.
"""

from __future__ import annotations

from typing import Any

from thrifty.proxy.http.errors import ApiError

PRIORITY, DEFAULT_LANE, FLEX, BATCH = "priority", "default", "flex", "batch"
LANES = (PRIORITY, DEFAULT_LANE, FLEX, BATCH)  # admission order
_ALIASES = {"auto": DEFAULT_LANE, "default": DEFAULT_LANE, "scale": DEFAULT_LANE, "flex": FLEX, "priority": PRIORITY}


def lane_of(body: dict[str, Any]) -> str:
    """The lane a request's `service_tier` asks for; a clear 400 for a value OpenAI does not define."""
    value = body.get("service_tier")
    if value is None:
        return DEFAULT_LANE
    lane = _ALIASES.get(value) if isinstance(value, str) else None
    if lane is None:
        raise ApiError(400, f"Invalid value for 'service_tier': {value!r}; expected one of "
                            f"{', '.join(sorted(_ALIASES))}", param="service_tier", code="invalid_value")
    return lane
