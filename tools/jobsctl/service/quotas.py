"""Service quotas of the local Jobs service, each with a setting (``jobsctl serve`` flags,
:class:`~jobsctl.stack.Stack` arguments) so that a fleet operator's scripts meet the errors
AWS answers when a quota is reached:

- active jobs (IN_PROGRESS or SCHEDULED): CreateJob answers ``LimitExceededException`` (410)
  beyond ``active_jobs`` (AWS's active-jobs quota; adjustable there too);
- control-plane request rate per operation: beyond ``api_rate_per_second`` (a token bucket
  per operation, burst = one second's worth) the answer is ``ThrottlingException`` (429);
  off unless set, so that local scripts are not slowed by AWS's per-API rates;
- targets per job (100) and tags per resource (50) are fixed, as on AWS
  (:mod:`.jobops`, :mod:`.fleet`);
- the data plane's per-thing request rate (``RequestThrottled`` over MQTT,
  ``ThrottlingException`` over HTTPS) is :class:`~.dataplane.DataPlane`'s ``throttle``.

``ServiceUnavailableException`` (503) is what a request gets while a part it needs is down:
the object store for a ``documentSource``, or the SQLite store locked past its busy timeout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .errors import ApiError

ACTIVE_JOBS = 1000


@dataclass
class Quotas:
    active_jobs: int | None = ACTIVE_JOBS
    api_rate_per_second: float | None = None


class RateLimiter:
    """Token buckets per control-plane operation."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, operation: str) -> None:
        now = time.monotonic()
        burst = max(1.0, self.rate)
        with self._lock:
            tokens, stamp = self._buckets.get(operation, (burst, now))
            tokens = min(burst, tokens + (now - stamp) * self.rate)
            if tokens < 1.0:
                self._buckets[operation] = (tokens, now)
                raise ApiError(
                    "ThrottlingException",
                    429,
                    f"Rate exceeded: {operation} is limited to {self.rate:g} requests per second.",
                )
            self._buckets[operation] = (tokens - 1.0, now)
