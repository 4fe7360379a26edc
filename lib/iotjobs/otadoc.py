# The checks an update job's document gets (ota, bundle, afr_ota, delta) before anything is
# downloaded or written: iotjobs.ota.parse()/check() load this module for the call and unload it
# after, so that a download runs without this code and its messages in the heap.
import binascii  # here, not in _sig_ok: an import of a built-in searches the path each time

from iotjobs.agent import Rejected
from iotjobs.ota import _hex
from micropython import const

_DOC_MAX_URL = const(4096)
_MAX_WBITS = const(13)  # an 8 KB window at most: a 32 KB one rarely fits a busy heap
# The fields of our own document formats (bundle; ota adds compression): any other
# name, e.g. a misspelt 'sha265', is refused by name. AWS's afr_ota documents carry fields we
# do not use; those are ignored, as AWS's own agent does.
_FIELDS = ("operation", "url", "size", "sha256", "signature", "version")
_FIELDS_OTA = _FIELDS + ("compression", "window_bits", "stream", "file_id", "allow_downgrade")


# ---------------------------------------------------------------- the job document


def _sig_ok(sig):
    # A base64 DER ECDSA signature (at most 72 bytes), strictly: what decodes and encodes back
    # to the same text. Checked before any download, not after the whole image came in.
    if not 12 <= len(sig) <= 100:
        return False
    try:
        raw = binascii.a2b_base64(sig)
    except ValueError:
        return False
    return raw[0] == 0x30 and binascii.b2a_base64(raw).strip() == sig.encode()


def check(ctx, doc, slot_size, what="OTA slot"):
    # The checks a job gets before anything is written or downloaded: parse(), and plain http
    # only where the device config allows it.
    cfg = ctx.config
    job = parse(doc, slot_size, bool(cfg.get("ota_key_file")), what)
    for url in (job["url"], job["delta"]["url"] if "delta" in job else None):  # full, patch
        if url and url.startswith("http://") and not cfg.get("ota_allow_http"):
            raise Rejected("plain http:// download refused: this device allows only https://")
    return job


def parse(doc, slot_size, keyed, what="OTA slot"):
    # -> {"url", "size", "sha256" (bytes or None), "sig" (str or None), "version" (or None)}.
    # Raises Rejected with the reason: nothing is written for a document that fails here.
    if "delta" in doc:  # a patch against the running image (iotjobs.delta): + "delta" {...}
        from iotjobs import delta

        return delta.parse(doc, slot_size, keyed, what)
    afr = doc.get("afr_ota")
    if afr is None:
        known = _FIELDS_OTA if what == "OTA slot" else _FIELDS
        for k in doc:
            if k not in known:
                raise Rejected("unknown field %r" % k)
    if afr is not None:
        files = afr.get("files") if isinstance(afr, dict) else None
        if not isinstance(files, list) or len(files) != 1 or not isinstance(files[0], dict):
            raise Rejected("afr_ota: exactly one file is supported")
        protos = afr.get("protocols", ["HTTP"])
        if (
            not isinstance(protos, list)
            or not protos
            or [p for p in protos if p not in ("HTTP", "MQTT")]
        ):
            raise Rejected("afr_ota: protocols must be MQTT and/or HTTP")
        f = files[0]
        doc = {
            "url": f.get("update_data_url") if "HTTP" in protos else None,
            "size": f.get("filesize"),
            "signature": f.get("sig-sha256-ecdsa"),
        }
        if "MQTT" in protos:
            doc["stream"] = afr.get("streamname") or 0  # 0: fails the name check below
            doc["file_id"] = f.get("fileid", 0)
    stream = doc.get("stream")
    fid = doc.get("file_id", 0)
    if stream is not None:
        if not _name(stream):
            raise Rejected("'stream' must be a stream name (1-128 of [a-zA-Z0-9_-])")
        if not isinstance(fid, int) or not 0 <= fid <= 255:
            raise Rejected("'file_id' must be an integer 0-255")
        if doc.get("compression") is not None:
            raise Rejected("gzip payloads are not supported over MQTT streams")
    url = doc.get("url")
    if url is not None or stream is None:  # MQTT only needs none
        if not isinstance(url, str) or not 8 < len(url) <= _DOC_MAX_URL:
            raise Rejected("'url' must be a URL string")
        if url.startswith("${"):
            raise Rejected("the URL placeholder was not replaced by the service")
        if not url.startswith("https://") and not url.startswith("http://"):
            raise Rejected("'url' must be an https:// URL")
    size = doc.get("size")
    if not isinstance(size, int) or size <= 0:
        raise Rejected("'size' must be a positive integer")
    if size > slot_size:
        raise Rejected("image of %d bytes does not fit the %d-byte %s" % (size, slot_size, what))
    digest = None
    if "sha256" in doc:
        digest = _hex(doc["sha256"], 64)
        if digest is None:
            raise Rejected("'sha256' must be 64 hex digits")
    sig = doc.get("signature")
    if sig is not None and (not isinstance(sig, str) or not _sig_ok(sig)):
        raise Rejected("'signature' must be a base64 DER ECDSA signature")
    if keyed and sig is None:
        raise Rejected("unsigned image refused: this device requires signed firmware")
    if digest is None and not keyed:
        raise Rejected("no 'sha256' and no signing key: the image could not be verified")
    version = doc.get("version")
    if version is not None and not isinstance(version, str):
        raise Rejected("'version' must be a string")
    down = doc.get("allow_downgrade", False)
    if not isinstance(down, bool):
        raise Rejected("'allow_downgrade' must be true or false")
    gz = None
    comp = doc.get("compression")
    if comp is not None:
        if comp != "gzip":
            raise Rejected("'compression' must be \"gzip\"")
        gz = doc.get("window_bits")
        if not isinstance(gz, int) or not 9 <= gz <= _MAX_WBITS:
            # The decompressor keeps a window of 2**window_bits bytes: the document states it
            # so that the device can refuse what it cannot afford before downloading.
            raise Rejected("gzip needs 'window_bits' 9-%d" % _MAX_WBITS)
    return {
        "url": url,
        "size": size,
        "sha256": digest,
        "sig": sig,
        "version": version,
        "gz": gz,
        "stream": stream,
        "fileid": fid,
        "down": down,
    }


def _name(s):
    if not isinstance(s, str) or not 0 < len(s) <= 128:
        return False
    for c in s:
        if not (c.isalpha() and c < "\x80" or "0" <= c <= "9" or c in "_-"):
            return False
    return True
