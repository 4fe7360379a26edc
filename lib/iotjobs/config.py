# The device configuration: config.json on the device filesystem.
#
# {"thing_name": "sensor-1", "endpoint": "xxxx-ats.iot.eu-west-1.amazonaws.com", "port": 8883,
#  "ca_file": "ca.pem", "cert_file": "cert.pem", "key_file": "key.pem", ...}
# plus the optional settings in DEFAULTS. File names are relative to the folder of config.json.
# load() refuses a missing or bad file with ConfigError naming the problem; nothing else in the
# agent ever sees an unchecked config.
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

# Settings only provisioning may change: a job that could move the device to another endpoint or
# identity could take it off the fleet for good.
_REQUIRED = ("thing_name", "endpoint", "ca_file", "cert_file", "key_file")
_OPTIONAL = {
    "client_id": str,
    "port": int,
    "server_hostname": str,  # TLS name to check when `endpoint` is an address
    "wifi_ssid": str,
    "wifi_password": str,
    "ota_key_file": str,  # PEM public key: when set, every OTA image must be signed with it
    "ota_ca_file": str,  # CA of the download server (default: ca_file)
    "ota_allow_http": bool,  # plain-http downloads; off unless provisioning says so
    "ota_protocol": str,  # "mqtt" (default) or "http": the one tried first when a job offers both
    "ota_stream_format": str,  # "json" (default) or "cbor": MQTT stream messages
    "ota_allow_downgrade": bool,  # with a job's "allow_downgrade": an older secure_version
    "app_dir": str,
}


class ConfigError(Exception):
    pass


def load(path=PATH):
    import json

    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError:
        raise ConfigError("%s is missing: provision the device (jobsctl deploy)" % path)
    except ValueError:
        raise ConfigError("%s is not valid JSON" % path)
    return check(raw, _base(path))


def _base(path):
    i = path.rfind("/")
    return path[: i + 1] if i >= 0 else ""


def check(raw, base=""):
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    cfg = {}  # type: dict
    for k in _REQUIRED:
        v = raw.get(k)
        if not isinstance(v, str) or not v:
            raise ConfigError("config: %s is required (a non-empty string)" % k)
        cfg[k] = v
    from iotjobs import protocol

    if not protocol.valid_thing(cfg["thing_name"]):
        raise ConfigError("config: thing_name %r is not a valid thing name" % cfg["thing_name"])
    for k, t in _OPTIONAL.items():
        if k in raw:
            if type(raw[k]) is not t:
                raise ConfigError("config: %s must be a %s" % (k, t.__name__))
            cfg[k] = raw[k]
    for k, ok in (("ota_protocol", ("mqtt", "http")), ("ota_stream_format", ("json", "cbor"))):
        if k in cfg and cfg[k] not in ok:
            raise ConfigError("config: %s must be %s" % (k, " or ".join(ok)))
    cfg.setdefault("client_id", cfg["thing_name"])
    cfg.setdefault("port", 8883)
    cfg.setdefault("app_dir", "app")
    for k in ("ca_file", "cert_file", "key_file", "ota_key_file", "ota_ca_file"):
        if k in cfg and not cfg[k].startswith("/"):
            cfg[k] = base + cfg[k]
    merged = merge_settings(cfg, raw, strict=False)
    for k in raw:
        if k not in cfg and k not in merged:
            raise ConfigError("config: unknown key %r" % k)
    cfg.update(merged)
    return cfg


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
