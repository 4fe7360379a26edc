# The device configuration: config.json on the device filesystem.
#
# {"thing_name": "sensor-1", "endpoint": "xxxx-ats.iot.eu-west-1.amazonaws.com", "port": 8883,
#  "ca_file": "ca.pem", "cert_file": "cert.pem", "key_file": "key.pem", ...}
# plus the optional settings in DEFAULTS. File names are relative to the folder of config.json.
# load() refuses a missing or bad file with ConfigError naming the problem; nothing else in the
# agent ever sees an unchecked config.
# The settings a job may change (DEFAULTS, their bounds, the config job) are iotjobs.settings's:
# a config job loads that module only, not this boot-time code.
from iotjobs.settings import DEFAULTS, PATH, ConfigError, merge_settings  # noqa: F401

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
