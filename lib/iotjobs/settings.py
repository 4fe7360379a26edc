# The settings a job may change (the `config` job: DEFAULTS and their bounds), and that job.
# iotjobs.config (boot-time: reading and checking config.json) takes its defaults from here; a
# config job loads this module alone.
from iotjobs.agent import LEVELS
from micropython import const

PATH = "config.json"
_MAX_INT = const(0x3FFFFFFF)

# Settings a job may change (the `config` handler), with their defaults and bounds.
DEFAULTS = {
    "log_level": "info",  # debug, info, warning, error
    "keepalive_s": 60,
    # stepTimeoutInMinutes sent with every IN_PROGRESS: the service ends the execution
    # TIMED_OUT when no report comes for this long (a board that died mid-job); 0: none.
    "step_timeout_min": 15,
    "timeout_ms": 10000,  # socket reads, replies to requests
    "backoff_min_ms": 1000,
    "backoff_max_ms": 640000,
    "progress_interval_ms": 2000,  # at most one progress report per interval
    "wdt_timeout_ms": 0,  # 0: no watchdog
    "self_test_timeout_ms": 60000,
    "tls_sessions": 0,  # during a download: 1 closes MQTT, 2 keeps it, 0 decides from free RAM
    "checkin_ms": 30000,  # MQTT closed for a download: reconnect, report, see a cancel this often
    "settings": {},  # the application's own settings, untouched by the agent
}
_BOUNDS = {
    "keepalive_s": (5, 1200),
    "step_timeout_min": (0, 10080),
    "timeout_ms": (500, 120000),
    "backoff_min_ms": (10, 600000),
    "backoff_max_ms": (10, 3600000),
    "progress_interval_ms": (0, 3600000),
    "wdt_timeout_ms": (0, 3600000),
    "self_test_timeout_ms": (1000, 3600000),
    "tls_sessions": (0, 2),
    "checkin_ms": (1000, 3600000),
}


class ConfigError(Exception):
    pass


def merge_settings(cfg, new, strict=True):
    # -> the job-changeable settings of cfg overlaid with those in new, checked. With strict,
    # any other key in new is refused (a config job may not touch identity or endpoint).
    out = {}
    for k, d in DEFAULTS.items():
        out[k] = cfg.get(k, d)
    for k, v in new.items():
        if k not in DEFAULTS:
            if strict:
                raise ConfigError("%r cannot be changed by a job" % k)
            continue
        if k == "settings":
            if not isinstance(v, dict):
                raise ConfigError("settings must be an object")
            s = dict(out["settings"])
            s.update(v)
            v = s
        elif k == "log_level":
            if v not in LEVELS:
                raise ConfigError("log_level must be one of %s" % ", ".join(LEVELS))
        else:
            lo, hi = _BOUNDS[k]
            if type(v) is not int or not lo <= v <= min(hi, _MAX_INT):
                raise ConfigError("%s must be an integer in %d..%d" % (k, lo, hi))
        out[k] = v
    if out["backoff_min_ms"] > out["backoff_max_ms"]:
        raise ConfigError("backoff_min_ms must not exceed backoff_max_ms")
    return out


async def job(ctx, doc):
    # The config job, {"operation": "config", "set": {"log_level": "debug", "settings": {...}}}:
    # validate, then merge into config.json atomically. Identity and endpoint keys are refused:
    # a job that could point the device elsewhere could take it off the fleet for good.
    import json

    from iotjobs.agent import Rejected, save

    new = doc.get("set")
    if not isinstance(new, dict) or not new:
        raise Rejected("a config job needs a non-empty object 'set'")
    try:
        merged = merge_settings(ctx.config, new)
    except ConfigError as e:
        raise Rejected(str(e))
    with open(PATH) as f:
        raw = json.load(f)
    for k in new:
        raw[k] = merged[k]
    save(PATH, raw)
    ctx.config.update(merged)
    return {"reason": "applied", "changed": ",".join(sorted(new))}
