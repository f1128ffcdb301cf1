"""Which path a request is routed on, and whether every receiver reads that path alike.

The guard must match the path the app or upstream will act on. Two things can
make them differ:

- mounting: under ``uvicorn --root-path /api`` or ``Mount("/api", app)`` the
  scope's ``path`` holds the full path and the app routes on the part after
  ``root_path`` (Starlette's ``get_route_path``): ``route_path`` does the same;
- normalisation: servers and frameworks disagree on dot segments, encoded
  ``/ ? #``, doubled slashes, backslashes and ``;`` parameters, so a path such as
  ``/v1/x/../chat/completions`` may be routed by the receiver to a guarded
  route the guard never matched. We never normalise behind the receiver's
  back: ``is_canonical`` says whether a path reads the same for everyone, and
  ``loosest_reading`` is what the most lenient receiver could make of it, so
  the middleware can refuse an ambiguous path that could reach a guarded route.
"""

from __future__ import annotations

import re
import string
import unicodedata
from urllib.parse import unquote, unquote_to_bytes

from starlette.types import Scope

from guardrail.adapters import BadRequest

# RFC 3986 path characters that no server decodes, splits or drops: letters,
# digits, unreserved marks and the sub-delimiters, without ';' (Tomcat and
# Spring cut ";params" out of a segment) and without '%' (a decoded '%' means
# the receiver could decode once more).
_PLAIN = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,=:@")
# Trimmed from segments by lenient receivers: spaces and control characters.
_TRIMMED = "".join(map(chr, range(0x21))) + "\x7f"


def route_path(scope: Scope) -> str:
    """The path the app routes on: ``path`` minus ``root_path`` when it starts with it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def is_canonical(scope: Scope) -> bool:
    """Whether every receiver reads this request's path exactly as the scope says.

    Canonical: each segment of the raw path, decoded on its own, is non-empty,
    neither ``.`` nor ``..``, and made only of characters no receiver decodes,
    splits or drops (so an encoded ``/`` is refused, not read as a separator);
    and the segments joined are the scope's path. The root ``/`` is canonical;
    a trailing slash is not (Express and others route ``/a/`` as ``/a``).
    """
    path: str = scope["path"]
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if raw is not None else path
    if text == "/" or not text.startswith("/"):
        return text == "/" == path
    segments = [unquote(segment) for segment in text[1:].split("/")]
    return "/" + "/".join(segments) == path and all(
        segment not in ("", ".", "..") and all(c in _PLAIN for c in segment) for segment in segments
    )


def loosest_readings(scope: Scope) -> set[str]:
    """What the most lenient receivers could route this request as.

    From the decoded path and from the raw one: the server's decoding has
    already replaced what it could not read (overlong UTF-8 became U+FFFD),
    while an old decoder would read ``%c0%af`` as ``/``.
    """
    path = route_path(scope)
    found = {loosest_reading(path)}
    raw = scope.get("raw_path")
    if raw is not None:
        text = raw.decode("latin-1")
        root: str = scope.get("root_path", "")
        found.add(loosest_reading(text.removeprefix(root) if root else text))
    return found


def loosest_reading(path: str) -> str:
    """What the most lenient receiver could route this path as.

    Drops an absolute-form ``scheme://authority`` (RFC 9112 servers route on the
    path after it), decodes repeatedly (overlong UTF-8 and IIS's ``%uXXXX``
    too), turns backslashes into slashes, drops what follows a decoded ``?``
    or ``#``, ``;`` parameters, empty and ``.`` segments, resolves ``..``, trims
    spaces and control characters from each segment, and drops a ``.suffix``
    from the last one.
    """
    path = _ABSOLUTE_FORM.sub("", path, count=1)
    for _ in range(3):  # %252e -> %2e -> '.': a receiver may decode twice
        decoded = _lenient_unquote(path)
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/")
    # Java's equalsIgnoreCase and .NET's OrdinalIgnoreCase compare upper and
    # lower cases one character at a time: U+0131 (dotless i) matches "I".
    if not path.isascii():
        # Windows' "best fit" and NFKC-ing frameworks read a fullwidth "c" (U+FF43) as "c".
        # Marks dropped first: NFKC of a long run of them is quadratic.
        path = "".join(c for c in path if unicodedata.category(c) not in ("Mn", "Me"))
        path = "".join(map(_ascii_case, unicodedata.normalize("NFKC", path)))
    for cut in "?#":
        path = path.partition(cut)[0]
    resolved: list[str] = []
    for segment in path.split("/"):
        segment = segment.partition(";")[0].strip(_TRIMMED)
        if segment in ("", "."):
            continue
        if segment == "..":
            if resolved:
                resolved.pop()
            continue
        resolved.append(segment)
    if resolved and (dot := resolved[-1].find(".", 1)) > 0:
        # "completions.json": Rails routes a format suffix, Spring "completions.*".
        resolved[-1] = resolved[-1][:dot]
    return "/" + "/".join(resolved)


# "http://host:port" before the path of an absolute-form request target.
_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*")
# Two- and three-byte overlong encodings of an ASCII character (%c0%af is '/'
# to decoders that never checked), and IIS's %u002f.
_OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x81][\x80-\xbf]")
_PERCENT_U = re.compile(r"%u([0-9A-Fa-f]{4})")


def _ascii_case(char: str) -> str:
    if char.isascii():
        return char
    for cased in (char.upper(), char.lower()):
        if len(cased) == 1 and cased.isascii():
            return cased
    return char


def _lenient_unquote(path: str) -> str:
    """One round of decoding as the most lenient decoder does it."""
    path = _PERCENT_U.sub(lambda m: chr(int(m[1], 16)), path)
    raw = _OVERLONG.sub(_ascii_of_overlong, unquote_to_bytes(path))
    return raw.decode("utf-8", "replace")


def _ascii_of_overlong(match: re.Match[bytes]) -> bytes:
    value = 0
    for byte in match[0]:
        value = (value << 6) | (byte & 0x3F)
    return bytes([value & 0x7F])


def query_text(scope: Scope) -> str:
    """The text of the query string, as the receiver reads it: screened with the body.

    An app or upstream may act on ``?prompt=...`` as well as on the body, so
    every decoded name and value is text to screen, one per line. Where
    decoders disagree, the query is refused: a malformed percent-escape
    (``%zz`` is kept by some, dropped or rejected by others), ``;`` (an
    old separator some still split on), and bytes that are not UTF-8 once
    decoded (Latin-1 to some, replaced to others, overlong ``/`` to the
    oldest). A ``+`` is a space to form decoders and itself to path-style
    ones: both readings are screened. A value that still holds escapes once
    decoded (``%2520``) is also read decoded again, as a receiver that
    decodes twice would.
    """
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return ""
    if _BAD_ESCAPE.search(raw) or b";" in raw:
        raise BadRequest(
            "ambiguous_query",
            "the query string is ambiguous (a malformed %-escape or ';'): encode it plainly",
        )
    readings = [raw.replace(b"+", b" ")]
    if b"+" in raw:
        readings.append(raw)
    texts: list[str] = []
    for reading in readings:
        for field in reading.split(b"&"):
            for part in field.split(b"=", 1):
                try:
                    text = unquote_to_bytes(part).decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest(
                        "ambiguous_query", "the query string is not UTF-8 once decoded"
                    ) from None
                texts.append(text)
                for _ in range(2):  # %252e -> %2e -> '.'
                    if (again := unquote(text)) == text:
                        break
                    texts.append(text := again)
    return "\n".join(texts)


# A '%' not followed by two hex digits, or a raw byte outside printable ASCII.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})|[^\x21-\x7e]")
