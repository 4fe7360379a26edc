# No downgrades: a monotonic security counter, the highest app-descriptor secure_version this
# device has confirmed, kept in NVS (namespace "iotjobs", key "secver") where it survives
# resets, reflashed slots and rollbacks. An OTA image whose secure_version is below
# max(counter, running image's) is refused unless the job and the device config both allow it.
# A counter that cannot be read refuses every image (fail safe).
from micropython import const

_NS = "iotjobs"
_KEY = "secver"
_NOT_FOUND = const(-0x1102)  # ESP_ERR_NVS_NOT_FOUND: nothing confirmed yet


def _stored():
    import esp32

    try:
        return esp32.NVS(_NS).get_i32(_KEY)
    except OSError as e:
        if e.args[0] == _NOT_FOUND:
            return 0
        raise


def floor(board):
    # -> the lowest secure_version this device accepts; raises OSError when NVS cannot be read.
    from iotjobs.board import app_secure_version

    n = _stored()
    running = app_secure_version(board.running_slot())
    return running if running > n else n


def confirm(n):
    # After an image of secure_version n is confirmed: the counter never goes down.
    import esp32

    if n <= _stored():
        return
    nvs = esp32.NVS(_NS)
    nvs.set_i32(_KEY, n)
    nvs.commit()


def check(ctx, job, slot):
    # The image's secure_version against the floor, after the signature (a descriptor is only
    # believed once the image is known to be genuine). Returns when the image may be booted.
    from iotjobs.agent import Rejected
    from iotjobs.board import app_secure_version
    from iotjobs.otaboot import _fail_before_boot

    new = app_secure_version(slot)
    ctx.state["sv"] = new
    try:
        low = floor(ctx.board)
    except OSError as e:
        _fail_before_boot(ctx, "security counter unreadable (%r): update refused" % (e,))
    if new >= low:
        return
    if job["down"] and ctx.config.get("ota_allow_downgrade") is True:
        ctx.log("downgrade to secure_version %d (floor %d): allowed" % (new, low), "warning")
        return
    ctx.board.update_slot(ctx.state["slot"]).erase()
    why = "downgrade: secure_version %d is below this device's %d" % (new, low)
    if job["down"]:
        why += " (the device config does not allow downgrades)"
    raise Rejected(why)
