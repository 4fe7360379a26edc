# Unix-port stand-in for the firmware's `ssl` module (micropython-lib's shim over the
# native `tls`). Debian's Unix build strips micropython-lib, and umqtt.simple 1.3.4 imports
# `ussl`, so this gives both names the firmware's wrap_socket signature and defaults.
# Like the firmware, cert_reqs defaults to CERT_NONE: device code must ask for
# CERT_REQUIRED itself, and the tests prove it does.
import tls
from tls import *  # noqa: F403


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
    # A new context per connection, as the firmware's shim makes (about 3 KB of heap).
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_SERVER if server_side else tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = cert_reqs
    if cert is not None or key is not None:
        ctx.load_cert_chain(cert, key)
    if cadata is not None:
        # The native method takes its argument positionally.
        ctx.load_verify_locations(cadata)
    return ctx.wrap_socket(
        sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake,
        server_hostname=server_hostname,
    )
