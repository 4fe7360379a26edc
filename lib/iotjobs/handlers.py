# The built-in job handlers that need no download: reboot and config.
from iotjobs.agent import Rejected


def reboot(ctx, doc):
    # {"operation": "reboot"}: report, reset, and report SUCCEEDED once the board is back.
    if ctx.state.get("rebooted"):
        return {"reason": "rebooted", "firmware": ctx.board.firmware_version()}
    ctx.state["rebooted"] = True
    ctx.reboot({"step": "rebooting"})


def config(ctx, doc):
    # {"operation": "config", "set": {"log_level": "debug", "settings": {...}}}: validate, then
    # merge into config.json atomically. Identity and endpoint keys are refused: a job that
    # could point the device elsewhere could take it off the fleet for good.
    from iotjobs import config, store

    new = doc.get("set")
    if not isinstance(new, dict) or not new:
        raise Rejected("a config job needs a non-empty object 'set'")
    try:
        merged = config.merge_settings(ctx.config, new)
    except config.ConfigError as e:
        raise Rejected(str(e))
    import json

    with open(config.PATH) as f:
        raw = json.load(f)
    for k in new:
        raw[k] = merged[k]
    store.save(config.PATH, raw)
    ctx.config.update(merged)
    return {"reason": "applied", "changed": ",".join(sorted(new))}
