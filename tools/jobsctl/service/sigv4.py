"""SigV4 verification of control-plane requests with botocore's own signer.

The signature is recomputed over the request as received (method, raw path, query, the
headers named in SignedHeaders, body) with the state dir's secret and compared in constant
time. Failures map to AWS's 403 errors.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .errors import ApiError

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
    r"SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})"
)
_SKEW = dt.timedelta(minutes=15)


def _denied(name: str, message: str) -> ApiError:
    return ApiError(name, 403, message)


def verify(
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = "iot",
) -> None:
    """Raise ApiError (403) unless the request carries a valid signature of our credentials."""
    lower = {k.lower(): v for k, v in headers.items()}
    stamp, names, signature = verify_headers(lower, access_key, region, service)
    request = AWSRequest(method=method, url=url, data=body, headers={n: lower[n] for n in names})
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, secret_key), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        raise _denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )


def verify_headers(
    lower: dict[str, str], access_key: str, region: str, service: str = "iot"
) -> tuple[str, list[str], str]:
    """Everything but the signature itself, which needs the body: our access key, scope,
    date and signed headers. Raise ApiError (403), else return (X-Amz-Date, signed header
    names, signature). Lets a server refuse a stranger before reading a byte of the body."""
    auth = lower.get("authorization")
    if not auth:
        raise _denied("UnrecognizedClientException", "Missing Authentication Token")
    m = _AUTH.fullmatch(auth.strip())
    if not m:
        raise _denied("InvalidSignatureException", "Authorization header is not AWS SigV4.")
    key_id, day, scope_region, scope_service, signed, signature = m.groups()
    if not hmac.compare_digest(key_id, access_key):
        raise _denied(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if scope_region != region or scope_service != service:
        raise _denied(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region and service ({region}/{service}).",
        )
    stamp = lower.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise _denied("InvalidSignatureException", "X-Amz-Date is missing or invalid.") from None
    if stamp[:8] != day:
        raise _denied("InvalidSignatureException", "Credential date does not match X-Amz-Date.")
    if abs(dt.datetime.now(dt.UTC) - when) > _SKEW:
        raise _denied("InvalidSignatureException", "Signature expired: request time is skewed.")
    names = signed.split(";")
    if "host" not in names:
        raise _denied("InvalidSignatureException", "The host header must be signed.")
    missing = [n for n in names if n not in lower]
    if missing:
        raise _denied("InvalidSignatureException", f"Signed header {missing[0]} is missing.")
    return stamp, names, signature
