"""The device's streaming HTTP(S) client (lib/iotjobs/http.py) under the Unix port.

Against a real HTTPS server on loopback (tests/plugin_http.py) with a certificate from the test
CA: whole downloads and Range resumes hash to the object's SHA-256, redirects are followed,
servers that misbehave end in a clear error instead of a hang, and TLS is never unverified.
The whole-block hot loop runs under ``micropython.heap_lock()``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from jobsctl.pki import CertificateAuthority

FETCH = Path(__file__).parent / "device" / "fetch.py"


@pytest.fixture()
def fetch(micropython, ca: CertificateAuthority):
    def run(
        url: str,
        start: int = 0,
        ca_file: str | None = None,
        heapsize: str = "128k",
        allow_http: bool = False,
    ) -> list[str]:
        args = [url, ca_file or str(ca.cert_path), str(start)] + (["http"] if allow_http else [])
        r = micropython(script=FETCH, args=tuple(args), heapsize=heapsize, timeout=30).check()
        return r.out.split()

    return run


@pytest.fixture()
def blob(https_server) -> bytes:
    data = os.urandom(256 * 1024 + 123)  # whole blocks plus a tail
    https_server.objects["img"] = data
    return data


def test_download_hash_matches_with_no_allocation_in_the_block_loop(fetch, https_server, blob):
    out = fetch(https_server.url("/obj/img"))
    assert out[:5] == ["OK", "200", "0", str(len(blob)), str(len(blob))]
    assert out[5] == hashlib.sha256(blob).hexdigest()
    assert int(out[6]) == len(blob) // 4096  # every whole block went through heap_lock


def test_range_resume_returns_the_rest_of_the_object(fetch, https_server, blob):
    start = 40960
    out = fetch(https_server.url("/obj/img"), start)
    assert out[:5] == ["OK", "206", str(start), str(len(blob) - start), str(len(blob))]
    assert out[5] == hashlib.sha256(blob[start:]).hexdigest()
    assert https_server.requests[-1] == ("/obj/img", f"bytes={start}-")


def test_server_ignoring_range_is_skipped_to_the_offset(fetch, https_server, blob):
    https_server.objects["img2"] = blob
    out = fetch(https_server.url("/norange/img2"), 5000)
    assert out[:5] == ["OK", "200", "5000", str(len(blob) - 5000), str(len(blob))]
    assert out[5] == hashlib.sha256(blob[5000:]).hexdigest()


@pytest.mark.parametrize("path", ["/redirect?k=img", "/redirect-abs?k=img"])
def test_redirects_relative_and_absolute_are_followed(fetch, https_server, blob, path):
    out = fetch(https_server.url(path))
    assert out[0] == "OK" and out[5] == hashlib.sha256(blob).hexdigest()


def test_redirect_loop_ends_in_an_error(fetch, https_server):
    assert fetch(https_server.url("/loop"))[:3] == ["ERR", "HTTPError", "(310,"]


@pytest.mark.parametrize(("path", "status"), [("/forbidden", "403"), ("/obj/missing", "404")])
def test_refused_and_missing_objects_raise_http_error_with_the_status(
    fetch, https_server, path, status
):
    out = fetch(https_server.url(path))
    assert out[:3] == ["ERR", "HTTPError", f"({status},"]


def test_offset_beyond_the_object_is_416(fetch, https_server, blob):
    assert fetch(https_server.url("/obj/img"), len(blob) + 10)[:3] == ["ERR", "HTTPError", "(416,"]


def test_stalled_body_times_out_instead_of_hanging(fetch, https_server):
    out = fetch(https_server.url("/stall"))
    assert out[:3] == ["ERR", "OSError", "(110,)"]  # ETIMEDOUT after the 3 s socket timeout


def test_body_cut_short_is_an_io_error(fetch, https_server):
    out = fetch(https_server.url("/short"))
    assert out[0] == "ERR" and out[1] == "OSError"


def test_chunked_encoding_and_oversized_header_lines_are_refused(fetch, https_server):
    assert "chunked" in " ".join(fetch(https_server.url("/chunked")))
    assert "longer than 1024" in " ".join(fetch(https_server.url("/longheader")))


def test_server_certificate_from_another_ca_is_refused(fetch, foreign_https_server):
    foreign_https_server.objects["img"] = b"x" * 10
    out = fetch(foreign_https_server.url("/obj/img"))
    assert out[:2] == ["ERR", "OSError"] or out[:2] == ["ERR", "ValueError"]
    assert not foreign_https_server.requests  # nothing was asked of an untrusted server


def test_certificate_for_another_host_is_refused(fetch, misnamed_https_server):
    misnamed_https_server.objects["img"] = b"x" * 10
    out = fetch(misnamed_https_server.url("/obj/img"))
    assert out[0] == "ERR"
    assert not misnamed_https_server.requests


def test_https_without_a_ca_and_plain_http_without_the_flag_are_refused(fetch, https_server):
    out = fetch(https_server.url("/obj/img"), ca_file="-")
    assert out[:2] == ["ERR", "ValueError"] and "CA" in " ".join(out)
    out = fetch(https_server.url("/obj/img").replace("https:", "http:"))
    assert out[:2] == ["ERR", "ValueError"] and "plain http refused" in " ".join(out)


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "https://user@host/x", "https://host:99999/x", "https://[::1]/x", "nope"]
)
def test_unsupported_urls_are_value_errors(fetch, url):
    assert fetch(url)[:2] == ["ERR", "ValueError"]


def test_plain_http_download_with_the_flag_under_48k_heap(fetch, http_server):
    data = os.urandom(100_000)
    http_server.objects["img"] = data
    out = fetch(http_server.url("/obj/img"), ca_file="-", heapsize="48k", allow_http=True)
    assert out[0] == "OK" and out[5] == hashlib.sha256(data).hexdigest()
