"""Reading a guarded request body: capped, and decoded, so we screen what the app reads."""

from __future__ import annotations

import asyncio
import zlib

from starlette.types import Receive

from guardrail.adapters import Adapter, BadRequest, ChatRequest

# Above this size a body is parsed in a worker thread: a hostile megabyte (a
# hundred thousand keys, say) costs a few hundred ms of Python. The parse holds
# the GIL, but the event loop still gets its turns between thread switches.
_INLINE_LIMIT = 64 * 1024
# Bodies declared as these are read as JSON by the receivers we know; text/plain is
# what a browser's fetch sends for a string body.
_JSON_TYPES = frozenset({"application/json", "text/json", "text/plain"})


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive, *, cap: int, content_length: str | None) -> bytes:
    """The whole request body; ``BadRequest`` (413) as soon as it exceeds ``cap`` bytes."""
    if (
        content_length is not None
        and content_length.strip().isdigit()
        and int(content_length) > cap
    ):
        raise _too_large(cap)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def parse(adapter: Adapter, body: bytes) -> ChatRequest:
    """The adapter's reading of ``body`` (or its ``BadRequest``), off the loop when big."""
    if len(body) <= _INLINE_LIMIT:
        return adapter.parse_request(body)
    return await asyncio.to_thread(adapter.parse_request, body)


def check_media_type(content_types: list[str]) -> None:
    """Refuse a body declared as something a receiver would not read as UTF-8 JSON (415).

    A receiver that honours ``charset=shift_jis`` reads some UTF-8 sequences with a
    backslash swallowed, so different JSON; one that reads a form percent-decodes
    what we screened encoded. We screen UTF-8 JSON, so only that may be declared.
    """
    if not content_types:
        return
    if len(content_types) > 1:
        raise BadRequest("ambiguous_header", "more than one Content-Type header")
    media_type, _, params = content_types[0].partition(";")
    name = media_type.strip().lower()
    if (
        name
        and name not in _JSON_TYPES
        and not (name.startswith("application/") and name.endswith("+json"))
    ):
        raise BadRequest(
            "unsupported_media_type", f"Content-Type {media_type!r} is not JSON", status=415
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise BadRequest(
                "unsupported_charset", f"charset {value.strip()!r} is not UTF-8", status=415
            )


def decode(body: bytes, *, encoding: str | None, cap: int) -> bytes:
    """Undo a gzip or deflate ``Content-Encoding``, never inflating past ``cap`` bytes."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    name = encoding.strip().lower()
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif name == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        # Text we cannot decode is text we cannot screen: refuse, never pass it on.
        raise BadRequest(
            "unsupported_encoding",
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none",
            status=415,
        )
    inflater = zlib.decompressobj(wbits)
    try:
        # max_length bounds the work a compression bomb can cause.
        plain = inflater.decompress(body, cap + 1)
    except zlib.error as exc:
        raise BadRequest("invalid_encoding", f"the body is not valid {name}: {exc}") from None
    if len(plain) > cap or inflater.unconsumed_tail:
        raise _too_large(cap)
    if not inflater.eof:
        raise BadRequest("invalid_encoding", f"the {name} body is truncated")
    return plain


def _too_large(cap: int) -> BadRequest:
    return BadRequest("body_too_large", f"the request body is larger than {cap} bytes", status=413)
