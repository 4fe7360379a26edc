# Unix-port stand-in for the firmware's `ssl` module (micropython-lib's shim over the
# native `tls`). Debian's Unix build strips micropython-lib, and umqtt.simple 1.3.4 imports
# `ussl`, so this gives both names the firmware's wrap_socket signature and defaults.
# Like the firmware, cert_reqs defaults to CERT_NONE: device code must ask for
# CERT_REQUIRED itself, and the tests prove it does.
import tls
from tls import *  # noqa: F403

# Platform quirk, Unix only: Debian's system mbedTLS is built with MBEDTLS_HAVEGE_C, which puts
# a 36 KB HAVEGE table inside every mbedtls_entropy_context, so one tls.SSLContext costs ~40 KB
# of the MicroPython heap here (about 1.5 KB on an ESP32). A new context per connection, as the
# firmware's shim makes, would need a fresh contiguous 40 KB block at every reconnect and make
# heap figures meaningless. So client contexts are kept per identity (same key, cert, CA and
# verify mode -> same context; anything different gets a new one), and `reserve()` lets the
# simulated board allocate the first one at power-on, before the heap is fragmented.
_ctx = None
_ident = None  # what _ctx was configured with; None while it is still blank


def reserve():
    global _ctx, _ident
    if _ctx is None:
        _ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        _ident = None


def _client(key, cert, cert_reqs, cadata):
    global _ctx, _ident
    ident = (key, cert, cert_reqs, cadata)
    if _ctx is not None and _ident == ident:
        return _ctx
    if _ctx is None or _ident is not None:
        _ctx = None  # let the old one go before making the next
        _ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx, _ctx = _ctx, None  # a context that fails half-way through is never reused
    ctx.verify_mode = cert_reqs
    if cert is not None or key is not None:
        ctx.load_cert_chain(cert, key)
    if cadata is not None:
        # The native method takes its argument positionally.
        ctx.load_verify_locations(cadata)
    _ctx, _ident = ctx, ident
    return ctx


def wrap_socket(
    sock,
    server_side=False,
    key=None,
    cert=None,
    cert_reqs=CERT_NONE,  # noqa: F405
    cadata=None,
    server_hostname=None,
    do_handshake=True,
):
    if server_side:
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_SERVER)
        ctx.verify_mode = cert_reqs
        if cert is not None or key is not None:
            ctx.load_cert_chain(cert, key)
        if cadata is not None:
            ctx.load_verify_locations(cadata)
    else:
        ctx = _client(key, cert, cert_reqs, cadata)
    return ctx.wrap_socket(
        sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake,
        server_hostname=server_hostname,
    )
