"""Screening the app's answer before (hold-back) or while (optimistic) it reaches the client.

After the input verdict the app's messages are fed here in order. Its
``Content-Encoding`` is undone first (``content_coding``): the client gets
the decoded bytes we screened. A complete answer (it has a Content-Length)
is held whole, screened once, then released or replaced by a refusal. A
streamed answer is cut into units (``framing``: SSE when its bytes are SSE,
whatever its headers say), gathered into windows of normalised text
(``windows``), and each window is screened while the app goes on generating:
windows are screened concurrently and released in order. A refused window
ends the stream with a well-formed refusal that continues it.

The values of the app's own response headers are text the client receives:
they are screened with the first window (or the whole answer), not stripped,
because apps use them for ids and limits that clients read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Literal

from starlette.datastructures import Headers
from starlette.types import Message, Send

from guardrail.adapters import Adapter, ChatRequest
from guardrail.adapters.answer import AnswerParts, Progress
from guardrail.adapters.base import BadRequest
from guardrail.decide.decision import REFUSING
from guardrail.decide.guard import Assessment, Guard, Record
from guardrail.flow.content_coding import Decoder, Undecodable, codings
from guardrail.flow.framing import (
    Framer,
    LinesFramer,
    SSEFramer,
    TextFramer,
    Unit,
    looks_like_sse,
    whole_parts,
)
from guardrail.flow.windows import Window, Windows

# A common estimate for English text with OpenAI's tokenizers: used only to count what
# a cut answer did not generate (guardrail_app_tokens_saved_total), never to decide.
CHARS_PER_TOKEN = 4

Then = Literal["finish", "refuse"]

# Headers whose values are structure, not text anyone reads as language.
_STRUCTURAL = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"content-type",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"date",
        b"vary",
        b"etag",
        b"last-modified",
        b"expires",
        b"age",
        b"accept-ranges",
        b"cache-control",
    }
)


@dataclass(slots=True)
class _Queued:
    """A window waiting for its verdict, released in order."""

    window: Window
    verdict: asyncio.Future[Assessment] | None  # None: no text, nothing to screen
    # After the last window: "finish" the body, or "refuse" (the stream broke
    # off or could not be read, and the policy fails closed).
    then: Then | None = None


class AnswerScreen:
    """Takes the app's messages after the input verdict; releases what passed screening."""

    def __init__(
        self,
        guard: Guard,
        request: ChatRequest,
        send: Send,
        record: Record,
        adapter: Adapter | None = None,  # the route's API; the policy's format by default
    ) -> None:
        assert guard.policy.output is not None
        self.guard, self.request, self._send, self.record = guard, request, send, record
        self.adapter = adapter or guard.adapter
        self.stage = stage = guard.policy.output
        self.hold_back = stage.mode == "hold_back"
        self.fail_closed = guard.policy.on_error != "allow"
        self.finished = asyncio.Event()  # everything released, or the answer was cut
        self.answered = False  # the app started its response
        self.unscreened = False  # released without screening (undecodable, fail-open)
        self.app_failed = False  # fail-open, and the app sent nothing usable: an error went out
        self._start_message: Message | None = None  # held until the first release
        self._header_text: tuple[str, ...] = ()
        self._started = False  # the response start went to the client
        self._decoder: Decoder | None = None
        self._undecodable = False
        self._sniffed = b""  # the first bytes, until they say whether the body is SSE
        self._sse_header = False
        self._framer: Framer | None = None
        self._whole: list[bytes] | None = None  # a complete answer being held
        self._whole_encoded = False  # held as sent (decoded at its end)
        self._original_start: Message = {}
        self._windows = Windows(
            window_chars=stage.window_chars,
            overlap_chars=stage.overlap_chars,
            hold_back=self.hold_back,
            max_raw_bytes=stage.max_event_bytes,
        )
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._releaser: asyncio.Task[None] | None = None
        self._write = asyncio.Lock()
        self._cut = False
        self._ending = False  # the answer's last message arrived, or it broke off
        self._ident: str | None = None
        self._model: str | None = None
        self._progress = Progress()
        self._released_text = False
        self._released_steps: list[str] = []  # the stream grammar's steps the client has seen

    @property
    def generated_tokens(self) -> int:
        """About how many tokens of answer the app sent so far (four characters a token)."""
        return -(-self._windows.text_chars // CHARS_PER_TOKEN)

    async def feed(self, message: Message) -> None:
        """One message from the app, in order."""
        if self._cut or self._ending:
            return
        if message["type"] == "http.response.start":
            self.answered = True
            await self._start(message)
            return
        if message["type"] != "http.response.body":
            await self._forward(message)  # trailers and extensions pass as they are
            return
        last = not message.get("more_body", False)
        chunk = message.get("body", b"")
        body = chunk if self._whole_encoded else self._decode(chunk, last=last)
        if self._whole is not None:
            self._whole.append(body)
            if last:
                self._ending = True
                await self._screen_whole()
            return
        await self._stream(body, last=last)

    async def end_abruptly(self, reason: str) -> None:
        """The app stopped without finishing (idle, or it raised): screen the tail, then end.

        What was received is screened and released as usual; the policy's fail
        mode decides whether the answer then ends with a refusal. Either way
        the client gets a well-formed response.
        """
        if self._cut or self._ending or self.finished.is_set():
            return
        self._ending = True
        self.record.stream_cut = reason
        units: list[Unit] = []
        if self._whole is None and (self._framer is not None or self._sniffed):
            units = self._frame(b"", last=True)  # the tail (this may decide the framing)
        if self._whole is not None or self._releaser is None:
            # Nothing streamed yet, or a complete answer cut short: nothing of it goes out.
            if self.fail_closed:
                await self._refuse_whole()
            else:
                await self._app_failed(reason)
            self.finished.set()
            return
        for unit in units:
            await self._add(unit)
        if not self._cut:
            self._close(then="refuse" if self.fail_closed else "finish")

    async def aclose(self) -> None:
        """Stop screening (the client left or the request ended)."""
        if self._releaser is not None:
            self._releaser.cancel()
            await asyncio.gather(self._releaser, return_exceptions=True)
        self._cancel_queued()

    # --- the start of the answer ---------------------------------------------------

    async def _start(self, message: Message) -> None:
        raw = list(message.get("headers", []))
        headers = Headers(raw=raw)
        applied = codings(raw)
        if applied:
            try:
                self._decoder = Decoder(applied, cap=self.stage.max_answer_bytes)
            except Undecodable:
                self._undecodable = True
            else:
                # The client gets the decoded bytes we screen: the headers say so.
                raw = [
                    (k, v)
                    for k, v in raw
                    if k.lower() not in (b"content-encoding", b"content-length")
                ]
        self._start_message = {**message, "headers": raw}
        self._header_text = tuple(
            f"{k.decode('latin-1')}: {v.decode('latin-1')}"
            for k, v in raw
            if k.lower() not in _STRUCTURAL
        )
        self._sse_header = headers.get("content-type", "").startswith("text/event-stream")
        if "content-length" in headers or self._undecodable:
            # A complete answer (or one we cannot read): held whole, as it came, and
            # decoded at its end, so a fail-open release can pass it on unchanged.
            self._whole, self._whole_encoded = [], True
            self._original_start = message

    # --- a complete answer -----------------------------------------------------------

    async def _screen_whole(self) -> None:
        assert self._whole is not None
        body = b"".join(self._whole)
        if self._whole_encoded and self._decoder is not None and not self._undecodable:
            try:
                body = self._decoder.feed(body) + self._decoder.finish()
            except Undecodable:
                self._undecodable = True
        if self._undecodable:
            # Cannot read it, so cannot screen it (and never as text): the fail mode decides.
            if self.fail_closed:
                self.record.stream_cut = "error"
                await self._refuse_whole()
            elif self._whole_encoded:
                self.unscreened = True
                await self._release_whole(body, original=True)
            else:
                await self._app_failed("error")  # part of it was decoded: nothing whole to pass
            self.finished.set()
            return
        text, body, readable = self._whole_text(body)
        if not readable and self.fail_closed:
            self.record.stream_cut = "error"
            await self._refuse_whole()
            self.finished.set()
            return
        assessment = await self.guard.assess(text, "output")
        self.record.outputs.append(assessment)
        if assessment.decision in REFUSING:
            await self._refuse_whole()
        else:
            await self._release_whole(body)
        self.finished.set()

    def _whole_text(self, body: bytes) -> tuple[str, bytes, bool]:
        """The text of a complete answer, the body to release, and whether all of it was read."""
        parse = self.adapter.event_parts
        lines = self.adapter.framing == "ndjson"  # its client reads JSON lines, not SSE
        if not lines and (self._sse_header or looks_like_sse(body, final=True)):
            units = whole_parts(body, parse, self.adapter.event_names)
            readable = [u for u in units if not u.unreadable]
            # Fail-open: what cannot be read is stripped, never passed unscreened.
            body = b"".join(u.raw for u in readable)
            parts = AnswerParts(
                tuple(f for u in readable for f in u.flows),
                (*self._header_text, *(s for u in readable for s in u.side)),
            )
            return parts.text(), body, len(readable) == len(units)
        text = self.adapter.answer_parts(body).text()
        return "\n".join([*self._header_text, text]), body, True

    async def _release_whole(self, body: bytes, *, original: bool = False) -> None:
        """The screened body with headers that fit it, or (fail-open) the app's own as sent."""
        assert self._start_message is not None
        start = self._original_start if original else self._start_message
        if not original:
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self._forward(start)
        self._started = True
        await self._forward({"type": "http.response.body", "body": body})

    async def _refuse_whole(self) -> None:
        self._cut = True
        if self._started:
            await self._cut_stream_body()
            return
        self._started = True
        for message in self.guard.refusal(self.request, adapter=self.adapter).messages():
            await self._forward(message)

    async def _app_failed(self, reason: str) -> None:
        """Fail-open, and the app sent nothing usable: an error in the API's shape, not silence."""
        self._cut = True
        self._started = True
        self.app_failed = True
        status, what = (504, "did not answer in time") if reason == "idle" else (502, "failed")
        error = BadRequest("app_error", f"the app {what}", status=status)
        for message in self.adapter.error(error).messages():
            await self._forward(message)

    # --- a streamed answer -----------------------------------------------------------

    def _decode(self, body: bytes, *, last: bool) -> bytes:
        if self._decoder is None or self._undecodable:
            return body
        try:
            return self._decoder.feed(body) + (self._decoder.finish() if last else b"")
        except Undecodable:
            self._undecodable = True
            return b""

    async def _stream(self, body: bytes, *, last: bool) -> None:
        if self._undecodable:  # corrupt or too large mid-stream: nothing more can be read
            await self._unreadable()
            if not self._ending:
                self._ending = True
                self._close(then="finish")
            return
        units = self._frame(body, last=last)
        if self._whole is not None:  # the sniffed body is plain text, screened whole
            if last:
                self._ending = True
                await self._screen_whole()
            return
        for unit in units:
            await self._add(unit)
            if self._cut or self._ending:
                return
        if last:
            self._ending = True
            self._close(then="finish")

    def _frame(self, body: bytes, *, last: bool) -> list[Unit]:
        """Units from the next bytes; the first bytes decide how the body is framed."""
        if self._framer is None and self.adapter.framing == "ndjson":
            # The app's client reads JSON lines whatever the bytes look like.
            self._framer = LinesFramer(
                self.adapter.event_parts, max_event_bytes=self.stage.max_event_bytes
            )
            self._start_releasing()
        if self._framer is None:
            self._sniffed += body
            sse = self._sse_header or looks_like_sse(self._sniffed, final=last)
            if sse is None:
                return []
            body, self._sniffed = self._sniffed, b""
            self._begin_stream(sse)
            if self._whole is not None:
                self._whole.append(body)
                return []
        assert self._framer is not None
        units = self._framer.feed(body)
        if last:
            units += self._framer.flush()
        return units

    def _begin_stream(self, sse: bool) -> None:
        if not sse and self.stage.plain_text == "whole":
            self._whole = []
            self._framer = TextFramer()  # unused: marks the framing as decided
            return
        self._framer = (
            SSEFramer(
                self.adapter.event_parts,
                max_event_bytes=self.stage.max_event_bytes,
                event_names=self.adapter.event_names,
            )
            if sse
            else TextFramer()
        )
        self._start_releasing()

    def _start_releasing(self) -> None:
        self._releaser = asyncio.ensure_future(self._release_in_order())
        self._queue_window(self._windows.add(Unit(b"", side=self._header_text)))

    async def _add(self, unit: Unit) -> None:
        if unit.unreadable:
            await self._unreadable()
            return
        self._ident = self._ident or unit.ident
        self._model = self._model or unit.model
        self._progress = self._progress.after(unit.progress)
        if not self.hold_back and not unit.done:
            await self._forward_live(unit)
            unit = replace(unit, raw=b"")  # sent: its window only screens it
        self._queue_window(self._windows.add(unit))

    async def _unreadable(self) -> None:
        """Bytes we cannot read as the client will: refused (fail-closed) or stripped."""
        if self.fail_closed and not self._ending:
            self._ending = True
            self.record.stream_cut = "error"
            if self._releaser is None:
                self._cut = True
                await self._refuse_whole()
                self.finished.set()
                return
            self._close(then="refuse")
        else:
            self.unscreened = True  # counted: the client got less than the app sent

    def _close(self, *, then: Then) -> None:
        window = self._windows.close()
        self._queue.put_nowait(_Queued(window, self._screen(window), then))

    def _queue_window(self, window: Window | None) -> None:
        if window is not None:
            self._queue.put_nowait(_Queued(window, self._screen(window)))

    def _screen(self, window: Window) -> asyncio.Future[Assessment] | None:
        if not window.text.strip():
            return None
        return asyncio.ensure_future(self.guard.assess(window.text, "output"))

    async def _forward_live(self, unit: Unit) -> None:
        # Optimistic: released at once, screened alongside. Checked under the
        # lock so that nothing follows a refusal that won the race.
        async with self._write:
            if not self._cut:
                await self._send_body(unit)

    async def _release_in_order(self) -> None:
        while True:
            queued = await self._queue.get()
            if queued.verdict is not None:
                assessment = await queued.verdict
                self.record.outputs.append(assessment)
                if assessment.decision in REFUSING:
                    failed = assessment.screening.flag is None and assessment.panel is None
                    await self._cut_stream("error" if failed else "flag")
                    return
            async with self._write:
                if self._cut:
                    return
                for unit in queued.window.release:
                    await self._send_body(unit)
            if queued.then == "refuse":
                await self._cut_stream(self.record.stream_cut or "error")
                return
            if queued.then == "finish":
                await self._forward_body(b"", more=False)
                self.finished.set()
                return

    async def _send_body(self, unit: Unit) -> None:
        """One unit to the client (the caller holds the write lock)."""
        await self._send_start()
        if unit.raw:
            await self._send({"type": "http.response.body", "body": unit.raw, "more_body": True})
            self._released_text = self._released_text or any(t.strip() for _, t in unit.flows)
            if unit.step is not None:
                self._released_steps.append(unit.step)

    async def _send_start(self) -> None:
        if not self._started and self._start_message is not None:
            self._started = True
            headers = self._start_message["headers"]
            if self._decoder is not None:
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            await self._send({**self._start_message, "headers": headers})

    async def _forward_body(self, body: bytes, *, more: bool) -> None:
        async with self._write:
            await self._send_start()
            await self._send({"type": "http.response.body", "body": body, "more_body": more})

    async def _cut_stream(self, reason: str) -> None:
        self.record.stream_cut = self.record.stream_cut or reason
        async with self._write:
            if not self._started:
                self._cut = True
            else:
                await self._cut_stream_body()
        if not self._started:
            await self._refuse_whole()
        self._cancel_queued()
        self.finished.set()

    async def _cut_stream_body(self) -> None:
        """End a started stream with the refusal (the caller holds the write lock)."""
        self._cut = True
        message = self.guard.policy.refusal.message
        if isinstance(self._framer, SSEFramer | LinesFramer):  # the API's own events
            refusal = self.adapter.stream_refusal(
                self.request,
                message=message,
                ident=self._ident,
                model=self._model,
                progress=self._progress,
                newline=self._released_text,
                steps=tuple(self._released_steps),
            )
        else:
            refusal = f"\n{message}\n".encode()
        await self._send({"type": "http.response.body", "body": refusal})

    def _cancel_queued(self) -> None:
        while not self._queue.empty():  # screens still running are not needed now
            queued = self._queue.get_nowait()
            if queued.verdict is not None:
                queued.verdict.cancel()

    async def _forward(self, message: Message) -> None:
        # Optimistic releases and a cut may race: one write at a time, whole.
        async with self._write:
            await self._send(message)
