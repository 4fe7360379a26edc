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
        ("reboot", "agent:reboot"),
        ("config", "config:job"),
        ("ota", "ota:handle"),
        ("afr_ota", "afr:handle"),
        ("bundle", "bundle:handle"),
    ):
        agent.register(op, "iotjobs." + fn)
    return a


def run(path="config.json"):
    global build, _start
    # Boot leaves the heap in small pieces; a TLS session's objects (the SSLContext with
    # mbedTLS's state in it: ~2 KB) need one contiguous block, and without one the GC heap
    # grows into the IDF heap that the session itself needs. So a block is kept for them from
    # the start and given back just before the first connection.
    hold = bytearray(_HOLD)
    a = _start(path)
    # Boot-time code is not kept while the agent runs (.mpy code lives in the heap).
    del build, _start
    if a is None:
        return
    try:
        a.board.start_watchdog()
        a.board.connect_network(a.cfg.get("wifi_ssid"), a.cfg.get("wifi_password"))
        del hold
        a.run()
    except Exception as e:
        # A bug in the agent: log, wait (fed), and reset rather than wedge. The persisted job
        # state makes the restart pick up where this one stopped.
        import sys

        sys.print_exception(e)
        a.board.sleep_ms(_CRASH_WAIT_MS)
        a.board.reset()


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
    agent.unload(("iotjobs.config",))  # a config job imports it again
    a = build(cfg)
    if cfg["app_dir"] not in sys.path:
        sys.path.append(cfg["app_dir"])  # the application files (bundle jobs replace them)
    try:
        import selftest  # type: ignore[import-not-found]  # the application's self-test hook, if it ships one

        a.board.self_test = selftest.run
    except ImportError:
        pass
    return a
