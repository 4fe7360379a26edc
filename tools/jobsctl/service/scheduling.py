"""Job scheduling as AWS IoT Jobs documents it: ``schedulingConfig`` (startTime, endTime,
endBehavior, maintenanceWindows with cron start times) and the rollout rates
(``maximumPerMinute``, ``exponentialRate``). Pure functions of the configuration, the counts and
the time the model passes in (its controllable clock), so tests move time instead of waiting.

Times are UTC. ``startTime``/``endTime``: ``YYYY-MM-DDTHH:MM`` (seconds and a ``Z`` are taken
too). A maintenance window's ``startTime`` is a cron expression as AWS writes them,
``cron(Minutes Hours Day-of-month Month Day-of-week Year)`` (the ``cron(...)`` wrapper and the
year are optional here): ``*``, ``?``, lists, ranges, ``/`` steps, ``JAN``-``DEC``,
``SUN``-``SAT`` (1-7, 1 = Sunday).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Any

# CreateJob's schedulingConfig rules (AWS IoT developer guide, "Job scheduling"): start and end
# at least 30 minutes from now, start at most a year ahead, end at least 30 minutes after the
# start and at most two years after it.
MIN_LEAD_S = 30 * 60
MAX_START_AHEAD_S = 366 * 86400
MAX_SPAN_S = 2 * 366 * 86400
END_BEHAVIORS = ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL")
MAX_RATE_PER_MINUTE = 1000  # RolloutRatePerMinute / MaxJobExecutionsPerMin

_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {d: i + 1 for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}


def parse_time(text: str, what: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


class Cron:
    """One maintenance window start expression: the set of each field's allowed values."""

    def __init__(self, text: str) -> None:
        expr = text.strip()
        m = re.fullmatch(r"cron\((.*)\)", expr)
        fields = (m.group(1) if m else expr).split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"maintenance window startTime {text!r} is not a cron expression"
                " (cron(Minutes Hours Day-of-month Month Day-of-week Year))"
            )
        minute, hour, dom, month, dow = fields[:5]
        year = fields[5] if len(fields) == 6 else "*"
        self.minutes = _field(minute, 0, 59, {}, text)
        self.hours = _field(hour, 0, 23, {}, text)
        self.doms = _field(dom, 1, 31, {}, text)
        self.months = _field(month, 1, 12, _MONTHS, text)
        self.dows = _field(dow, 1, 7, _DAYS, text)
        self.years = _field(year, 1970, 2199, {}, text)
        self.any_dom, self.any_dow = dom in ("*", "?"), dow in ("*", "?")

    def _day_ok(self, day: dt.date) -> bool:
        if day.year not in self.years or day.month not in self.months:
            return False
        dow = (day.isoweekday() % 7) + 1  # Sunday = 1
        dom_ok, dow_ok = day.day in self.doms, dow in self.dows
        if self.any_dom and self.any_dow:
            return True
        if self.any_dom:
            return dow_ok
        if self.any_dow:
            return dom_ok
        return dom_ok and dow_ok

    def next_start(self, after: float, horizon_days: int = 800) -> float | None:
        """The first matching minute at or after ``after`` (seconds since the epoch)."""
        t = dt.datetime.fromtimestamp(after, dt.UTC)
        first = t.replace(second=0, microsecond=0)
        if first.timestamp() < after:
            first += dt.timedelta(minutes=1)
        day = first.date()
        for _ in range(horizon_days):
            if self._day_ok(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        when = dt.datetime(
                            day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC
                        )
                        if when >= first:
                            return when.timestamp()
            day += dt.timedelta(days=1)
        return None


def _field(text: str, lo: int, hi: int, names: dict[str, int], whole: str) -> set[int]:
    if text in ("*", "?"):
        return set(range(lo, hi + 1))
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base in ("*", "?"):
                first, last = lo, hi
            elif "-" in base:
                a, b = base.split("-", 1)
                first, last = _value(a, names), _value(b, names)
            else:
                first = _value(base, names)
                last = hi if step_text else first
        except ValueError:
            raise ValueError(f"cron field {text!r} of {whole!r} is not understood") from None
        if step < 1 or not lo <= first <= last <= hi:
            raise ValueError(f"cron field {text!r} of {whole!r} is out of range {lo}-{hi}")
        out.update(range(first, last + 1, step))
    return out


def _value(text: str, names: dict[str, int]) -> int:
    return names[text.upper()] if text.upper() in names else int(text)


def check(config: dict[str, Any] | None, now: float) -> None:
    """CreateJob's schedulingConfig beyond its botocore shape; raises ValueError."""
    if not config:
        return
    start = end = None
    if config.get("startTime"):
        start = parse_time(config["startTime"], "schedulingConfig.startTime")
        if start < now + MIN_LEAD_S - 60:
            raise ValueError("schedulingConfig.startTime must be at least 30 minutes from now.")
        if start > now + MAX_START_AHEAD_S:
            raise ValueError("schedulingConfig.startTime can be at most a year from now.")
    if config.get("endTime"):
        end = parse_time(config["endTime"], "schedulingConfig.endTime")
        if end < now + MIN_LEAD_S - 60:
            raise ValueError("schedulingConfig.endTime must be at least 30 minutes from now.")
        if start is not None and end < start + MIN_LEAD_S:
            raise ValueError(
                "schedulingConfig.endTime must be at least 30 minutes after startTime."
            )
        if start is not None and end - start > MAX_SPAN_S:
            raise ValueError("schedulingConfig: at most two years between startTime and endTime.")
    if config.get("endBehavior") and end is None:
        raise ValueError("schedulingConfig.endBehavior needs an endTime.")
    for window in config.get("maintenanceWindows") or []:
        Cron(window["startTime"])


def window_open(window: dict[str, Any], t: float) -> bool:
    length = 60 * int(window["durationInMinutes"])
    start = Cron(window["startTime"]).next_start(t - length + 1)
    return start is not None and start <= t


def release_time(config: dict[str, Any] | None, now: float) -> float | None:
    """The first moment at or after ``now`` at which executions may be released, or None when
    none will be any more (past the endTime, or no window opens before it)."""
    if not config:
        return now
    end = parse_time(config["endTime"], "endTime") if config.get("endTime") else None
    t = now
    if config.get("startTime"):
        t = max(t, parse_time(config["startTime"], "startTime"))
    if end is not None and t >= end:
        return None
    windows = config.get("maintenanceWindows") or []
    if not windows:
        return t
    best: float | None = None
    for window in windows:
        if window_open(window, t):
            return t
        s = Cron(window["startTime"]).next_start(t)
        if s is not None and (best is None or s < best):
            best = s
    if best is None or (end is not None and best >= end):
        return None
    return best


def next_rollouts(config: dict[str, Any] | None, now: float) -> list[dict[str, str]]:
    """DescribeJob's scheduledJobRollouts: the next opening of each maintenance window."""
    out = []
    for window in (config or {}).get("maintenanceWindows") or []:
        start = Cron(window["startTime"]).next_start(now)
        if start is not None:
            when = dt.datetime.fromtimestamp(start, dt.UTC)
            out.append({"startTime": when.strftime("%Y-%m-%dT%H:%M")})
    return out


def check_rollout(config: dict[str, Any] | None) -> None:
    """jobExecutionsRolloutConfig beyond its shape: an exponentialRate needs a criterion."""
    exp = (config or {}).get("exponentialRate")
    if exp and not exp["rateIncreaseCriteria"]:
        raise ValueError(
            "exponentialRate.rateIncreaseCriteria needs numberOfNotifiedThings or"
            " numberOfSucceededThings."
        )


def rate_per_minute(config: dict[str, Any] | None, notified: int, succeeded: int) -> int | None:
    """Executions to release per minute now; None: no limit.

    ``exponentialRate`` starts at ``baseRatePerMinute`` and multiplies by ``incrementFactor``
    each time another ``numberOfNotifiedThings`` things received the job or another
    ``numberOfSucceededThings`` executions succeeded (whichever criterion is met first), capped
    by ``maximumPerMinute`` when that is given too, and by 1000.
    """
    if not config:
        return None
    exp = config.get("exponentialRate")
    cap = config.get("maximumPerMinute")
    if not exp:
        return int(cap) if cap else None
    crit = exp["rateIncreaseCriteria"]
    steps = 0
    if crit.get("numberOfNotifiedThings"):
        steps = max(steps, notified // int(crit["numberOfNotifiedThings"]))
    if crit.get("numberOfSucceededThings"):
        steps = max(steps, succeeded // int(crit["numberOfSucceededThings"]))
    rate = int(exp["baseRatePerMinute"] * float(exp["incrementFactor"]) ** min(steps, 100))
    return max(1, min(rate, int(cap) if cap else MAX_RATE_PER_MINUTE, MAX_RATE_PER_MINUTE))
