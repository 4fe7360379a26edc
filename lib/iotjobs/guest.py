# The application's side of the agent: the agent is an asyncio task in the sensor's own
# application, which publishes and subscribes through the agent's one MQTT session and says
# when a job may start and when the board may reset (update windows). The Agent's methods
# publish(), subscribe(), topic(), command() load this module when the application first uses
# them, so an agent without an application does not hold its code.
#
#   async def main(agent):                      # app/application.py (iotjobs.app.run)
#       agent.subscribe(agent.command("window"), on_window)
#       agent.may_start = agent.may_reboot = lambda: not measuring
#       while True:
#           agent.publish(agent.topic("reading"), json.dumps(reading()))
#           await asyncio.sleep_ms(5000)
from iotjobs import protocol
from micropython import const

# The application's own topics (the provisioning policies, `jobsctl provision --aws` and the
# local broker's ACL, allow these and no other thing's): it publishes under
# dt/<thing>/..., and subscribes under cmd/<thing>/...
TELEMETRY = "dt/"
COMMANDS = "cmd/"
QUEUE = const(16)  # messages held while MQTT is down or paused (oldest dropped first)
_WINDOW_MS = const(200)  # how often a closed update window is asked again
WAIT_JOB = "waiting for the application"
WAIT_REBOOT = "waiting for the application to allow a reboot"


def topic(a, name):
    return "%s%s/%s" % (TELEMETRY, a.thing, name)


def command(a, name):
    return "%s%s/%s" % (COMMANDS, a.thing, name)


def publish(a, topic, payload):
    # Queues a QoS 0 message; the agent sends it as soon as MQTT is up, in order (also while a
    # job runs: at its next check). Never blocks: with QUEUE messages waiting, the oldest is
    # dropped (counted in agent.dropped). The queue is the agent's, so it survives reconnects
    # and the pauses of a download's own TLS session. A topic outside the thing's telemetry
    # is refused (ValueError): AWS IoT closes the session of a client that publishes where
    # its policy does not allow it, and that session is the agent's too.
    if not _own(topic, TELEMETRY, a.thing):
        raise ValueError("not a telemetry topic of this thing: %s" % topic)
    q = a._out
    if len(q) >= QUEUE:
        q.pop(0)
        a.dropped += 1
    q.append((topic, payload))


def subscribe(a, filt, callback):
    # callback(topic, msg) (str, bytes) for every message on filt, a filter under this thing's
    # command topics; kept across reconnects. It runs in the agent's task: it must return
    # quickly (hand longer work to a task of the application).
    if not _own(filt, COMMANDS, a.thing):
        raise ValueError("not a command topic filter of this thing: %s" % filt)
    a._subs.append((filt, callback))
    t = a.link.t
    if t is not None:
        try:
            t.subscribe(filt)
        except OSError as e:
            a.link.drop(e)


def flush(a, t):
    q = a._out
    while q:
        topic, payload = q[0]
        t.publish(topic, payload)
        q.pop(0)
        a.sent += 1


def deliver(a, topic, msg):
    for filt, cb in a._subs:
        if _match(filt, topic):
            try:
                cb(topic, msg)
            except Exception as e:  # the application's bug must not take the agent down
                a.log("error", "subscriber of %s raised %r" % (filt, e))


async def window(a, ctx, kind):
    # The application's update window: waits (yielding) until may_start() / may_reboot() says
    # yes. The wait is reported once, as the job's step; with no further report the service's
    # step timer (step_timeout_min) runs, and a job that times out or is canceled while it
    # waits to start ends here (Canceled, from ctx.check()).
    fn = a.may_start if kind == "job" else a.may_reboot
    if fn is None or fn():
        return
    why = WAIT_JOB if kind == "job" else WAIT_REBOOT
    ctx.log(why)
    await a.report(protocol.IN_PROGRESS, {"step": why})
    while not fn():
        if kind == "job":
            await ctx.check()
        await a.sleep(_WINDOW_MS)
    ctx.log("the application allows it now")


def _own(topic, prefix, thing):
    # Whether topic (or filter) is under prefix + thing + "/".
    n = len(prefix)
    return (
        isinstance(topic, str)
        and topic.startswith(prefix)
        and topic.startswith(thing, n)
        and topic.startswith("/", n + len(thing))
        and len(topic) > n + len(thing) + 1
    )


def _match(filt, topic):
    # MQTT topic filter matching (+ one level, # the rest).
    f = filt.split("/")
    t = topic.split("/")
    for i, p in enumerate(f):
        if p == "#":
            return True
        if i >= len(t) or p != "+" and p != t[i]:
            return False
    return len(f) == len(t)
