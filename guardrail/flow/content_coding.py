"""An answer's ``Content-Encoding``, read as HTTP reads it, and undone as it streams.

HTTP joins repeated header lines with commas, and a list names the codings in
the order they were applied (``identity`` is no coding). Clients undo all of
them, so the guard must too: it screens the decoded text and sends the client
exactly that, with the encoding headers removed. A coding it cannot undo (or an
answer that inflates past the cap) is text it cannot screen.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Undecodable(Exception):
    """An encoding we do not know, a corrupt body, or one that inflates past the cap."""


def codings(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """Every coding applied, in order, across all ``Content-Encoding`` lines."""
    found = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            for token in value.decode("latin-1").split(","):
                coding = token.strip().lower()
                if coding and coding != "identity":
                    found.append(coding)
    return found


class Decoder:
    """Undoes a list of codings chunk by chunk, never producing more than ``cap`` bytes."""

    def __init__(self, applied: Sequence[str], *, cap: int) -> None:
        unknown = [c for c in applied if c not in _WBITS]
        if unknown:
            raise Undecodable(f"unsupported Content-Encoding {', '.join(unknown)}")
        # The last coding applied is the first undone.
        self._stages = [zlib.decompressobj(_WBITS[c]) for c in reversed(applied)]
        self._cap = cap
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        """The decoded bytes of the next chunk (possibly none yet)."""
        for stage in self._stages:
            if stage.eof:
                if chunk:  # a second gzip member or trailing junk: clients disagree
                    raise Undecodable("data after the end of the compressed stream")
                continue
            try:
                chunk = stage.decompress(chunk, self._cap - self._size + 1)
            except zlib.error as exc:
                raise Undecodable(f"corrupt compressed body: {exc}") from None
            if stage.unconsumed_tail or stage.unused_data:
                raise Undecodable("compressed body too large, or data after its end")
        self._size += len(chunk)
        if self._size > self._cap:
            raise Undecodable(f"the answer inflates past {self._cap} bytes")
        return chunk

    def finish(self) -> bytes:
        """Whatever is left; raises if a compressed stream was cut short."""
        tail = self.feed(b"")
        if not all(stage.eof for stage in self._stages):
            raise Undecodable("the compressed body is truncated")
        return tail
