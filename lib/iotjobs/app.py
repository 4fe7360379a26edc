# Builds the agent from config.json and runs it: what main.py calls on a board.
from micropython import const

_CRASH_WAIT_MS = const(10000)
_HOLD = const(4096)


def build(cfg, board=None):
    from iotjobs import agent, transport
    from iotjobs.board import Board, read

    if board is None:
        board = Board(cfg["wdt_timeout_ms"])
    log = agent.Agent.log

    import ssl

    def params():
        # Read at each connection: the PEMs are not kept as text between connections.
        return {
            "key": read(cfg["key_file"]),
            "cert": read(cfg["cert_file"]),
            "cadata": read(cfg["ca_file"]),
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": cfg.get("server_hostname", cfg["endpoint"]),
        }

    def factory():
        return transport.Transport(
            cfg["client_id"],
            cfg["endpoint"],
            cfg["port"],
            params,
            cfg["keepalive_s"],
            cfg["timeout_ms"],
        )

    link = transport.Link(factory, None, board, cfg["backoff_min_ms"], cfg["backoff_max_ms"])
    a = agent.Agent(cfg, board, link, cfg["log_level"])
    link._log = lambda msg: log(a, "warning", msg)
    # Handlers by name: each module is imported when its first job arrives and unloaded when
    # the job ends (agent._run), so an idle agent holds none of them.
    for op, fn in (
        ("reboot", "job:reboot"),
        ("config", "settings:job"),
        ("ota", "ota:handle"),
        ("afr_ota", "afr:handle"),
        ("bundle", "bundle:handle"),
    ):
        agent.register(op, "iotjobs." + fn)
    return a


def start(path="config.json"):
    # The agent built from config.json, the network up: for an application that runs the
    # loop itself (`asyncio.create_task(agent.serve())` beside its own tasks). None when
    # config.json is missing or bad (said on the console).
    global build, _start
    # Boot leaves the heap in small pieces; a TLS session's objects (the SSLContext with
    # mbedTLS's state in it: ~2 KB) need one contiguous block, and without one the GC heap
    # grows into the IDF heap that the session itself needs. So a block is kept for them from
    # the start and given back just before the first connection (Link.ensure() drops it).
    hold = bytearray(_HOLD)
    a = _start(path)
    # Boot-time code is not kept while the agent runs (.mpy code lives in the heap).
    del build, _start
    if a is None:
        return None
    try:
        a.board.start_watchdog()
        a.board.connect_network(a.cfg.get("wifi_ssid"), a.cfg.get("wifi_password"))
    except Exception as e:
        _crash(a, e)
    # Boot-time too: Wi-Fi's and the clock's modules are not used again (agent.unload).
    from iotjobs.agent import unload

    unload(("network", "ntptime"))
    a.link.hold = hold
    return a


def run(path="config.json"):
    # What main.py calls: the agent, and beside it the installed application (the module
    # `application` in app_dir, whose `async def main(agent)` is its entry point), both
    # tasks of one asyncio loop. Without an application the agent runs alone.
    global start
    a = start(path)
    del start  # boot-time code, as build and _start: not kept while the agent runs
    if a is None:
        return
    try:
        import asyncio

        asyncio.run(_main(a))
    except Exception as e:
        _crash(a, e)


def _crash(a, e):
    # A bug in the agent: log, wait (fed), and reset rather than wedge. The persisted job
    # state makes the restart pick up where this one stopped.
    import sys

    sys.print_exception(e)
    a.board.sleep_ms(_CRASH_WAIT_MS)
    a.board.reset()


async def _main(a):
    import asyncio

    # One try at MQTT before the application is imported: its TLS session needs ~30 KB of the
    # IDF heap, and the application's allocations can grow the GC heap into that (56 KB at
    # once): on esp32-tight no session fitted after it, for good. The try holds the loop for
    # one handshake, before the application exists; offline, the application starts anyway.
    await a.link.ensure(True)
    try:
        from application import main  # type: ignore[import-not-found]  # the application
    except ImportError:
        main = None
    except Exception as e:  # a broken application: the agent runs alone (a job can fix it)
        import sys

        sys.print_exception(e)
        main = None
    if main is not None:
        # The application's side of the agent (iotjobs.guest) is loaded now, while nothing else
        # runs, not inside the application's first tick or first publish.
        a._app()
        asyncio.create_task(_guest(main, a))
        await asyncio.sleep_ms(0)  # the application's first turn before the agent's start
    await a.serve()


async def _guest(main, a):
    # The application's entry point; if it ends with an exception the agent goes on (a job
    # can still replace the application).
    try:
        await main(a)
    except Exception as e:
        import sys

        a.log("error", "application stopped: %r" % (e,))
        sys.print_exception(e)


def _start(path):
    import sys

    from iotjobs import agent, config

    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        # Nothing to connect with: say so on the console and stay up for a REPL/deploy.
        print("E config: %s" % e)
        return None
    del config
    agent.unload(("iotjobs.config", "iotjobs.settings"))  # boot-time code
    a = build(cfg)
    if cfg["app_dir"] not in sys.path:
        sys.path.append(cfg["app_dir"])  # the application files (bundle jobs replace them)
    try:
        import selftest  # type: ignore[import-not-found]  # the application's self-test hook, if it ships one

        a.board.self_test = selftest.run
    except ImportError:
        pass
    return a
