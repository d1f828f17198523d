"""MLflow calls that outlast a server outage: capped exponential backoff for a configured patience."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF_S = 15.0


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable for longer than the configured patience."""


def retrying(call: Callable[..., T], *args: Any, what: str, patience_s: float, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, retried with capped exponential backoff while it raises, for up to
    `patience_s` seconds; then `TrackingUnavailable` naming `what` and the last error."""
    deadline, delay = time.monotonic() + patience_s, 1.0
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any transport or server error is worth a retry
            if time.monotonic() + delay > deadline:
                raise TrackingUnavailable(
                    f"MLflow unreachable for {patience_s:.0f}s while {what}: {exc}"
                ) from exc
            log.warning("MLflow call failed while %s (%s); retrying in %.0fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
