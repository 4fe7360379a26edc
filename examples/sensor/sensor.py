# The example sensor: samples every 100 ms and publishes a reading every 5 s through the
# agent's MQTT session (dt/<thing>/reading), while the agent takes jobs beside it in the same
# asyncio loop. It also keeps an update window: a message "closed" on cmd/<thing>/window makes
# the agent hold any job (and reset) until "open" comes.
#
# A reading (JSON): {"seq": n, "boot": id, "n": samples, "mean": value, "missed": samples
#   missed, "late_ms": largest lateness of a tick, "late_hs_ms": the same for ticks during which
#   a TLS handshake ran, "hs": handshakes, "dropped": messages the agent's queue dropped}
import asyncio
import json
import time

SAMPLE_MS = 100
PUBLISH_EVERY = 50  # samples: one reading per 5 s (config.json "settings": {"publish_every"})


class Sensor:
    def __init__(self, agent):
        self.agent = agent
        self.boot = "%04x" % (time.ticks_us() & 0xFFFF)
        self.seq = 0
        self.samples = 0  # since boot (selftest.py looks at it)
        self.open = True  # the update window
        self.extra = None  # fn() -> dict of more fields for each reading (a bench's probe)
        self._sum = 0
        self._n = 0
        self._missed = 0
        self._late = 0
        self._late_hs = 0
        settings = agent.cfg.get("settings") or {}
        self.every = settings.get("publish_every", PUBLISH_EVERY)

    def may_update(self):
        return self.open

    def on_window(self, topic, msg):
        self.open = msg != b"closed"

    def sample(self):
        # A stand-in for an ADC read: a value that moves.
        return (time.ticks_ms() // 100) % 50

    async def run(self):
        a = self.agent
        nxt = time.ticks_add(time.ticks_ms(), SAMPLE_MS)
        while True:
            hs = a.handshakes()
            wait = time.ticks_diff(nxt, time.ticks_ms())
            await asyncio.sleep_ms(wait if wait > 0 else 0)
            late = time.ticks_diff(time.ticks_ms(), nxt)
            if a.handshakes() != hs:
                self._late_hs = max(self._late_hs, late)
            else:
                self._late = max(self._late, late)
            if late >= SAMPLE_MS:  # whole periods passed: those samples are lost
                k = late // SAMPLE_MS
                self._missed += k
                nxt = time.ticks_add(nxt, k * SAMPLE_MS)
            self._sum += self.sample()
            self._n += 1
            self.samples += 1
            nxt = time.ticks_add(nxt, SAMPLE_MS)
            if self._n >= self.every:
                self.publish()

    def publish(self):
        a = self.agent
        r = {
            "seq": self.seq,
            "boot": self.boot,
            "n": self._n,
            "mean": self._sum / self._n,
            "missed": self._missed,
            "late_ms": self._late,
            "late_hs_ms": self._late_hs,
            "hs": a.handshakes(),
            "dropped": a.dropped,
        }
        if self.extra is not None:
            r.update(self.extra())
        a.publish(a.topic("reading"), json.dumps(r))
        self.seq += 1
        self._sum = self._n = self._missed = self._late = self._late_hs = 0


sensor = None  # the running Sensor (selftest.py checks it)


async def main(agent):
    global sensor
    s = sensor = Sensor(agent)
    agent.may_start = s.may_update
    agent.may_reboot = s.may_update
    agent.subscribe(agent.command("window"), s.on_window)
    await s.run()
