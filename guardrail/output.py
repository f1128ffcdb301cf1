"""Screening the app's answer before (hold-back) or while (optimistic) it reaches the client.

After the input verdict the app's messages are fed here in order. A complete
answer (it has a Content-Length) is held whole, screened once, then released
or replaced by a refusal. A streamed answer is cut into units (``framing``),
gathered into windows of text, and each window is screened while the app goes
on generating the next: windows are screened concurrently and released in
order. A refused window ends the stream with a well-formed refusal.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

from starlette.datastructures import Headers
from starlette.types import Message, Send

from guardrail.adapters import ChatRequest
from guardrail.decision import REFUSING
from guardrail.framing import Framer, SSEFramer, TextFramer, Unit
from guardrail.guard import Assessment, Guard, Record


@dataclass(slots=True)
class _Window:
    """Units released together once the window's text has been screened."""

    units: list[Unit]
    verdict: asyncio.Future[Assessment] | None  # None: no text, nothing to screen
    # After the last window: "finish" the body, or "refuse" (the stream broke
    # off and the policy fails closed).
    then: Literal["finish", "refuse"] | None = None


@dataclass(slots=True)
class _Pending:
    units: list[Unit] = field(default_factory=list)
    text: str = ""


class AnswerScreen:
    """Takes the app's messages after the input verdict; releases what passed screening."""

    def __init__(self, guard: Guard, request: ChatRequest, send: Send, record: Record) -> None:
        assert guard.policy.output is not None
        self.guard, self.request, self._send, self.record = guard, request, send, record
        self.stage = guard.policy.output
        self.hold_back = self.stage.mode == "hold_back"
        self.finished = asyncio.Event()  # everything released, or the stream was cut
        self.last_fed = time.monotonic()
        self._framer: Framer | None = None
        self._whole: list[Message] | None = None  # a complete answer being held
        self._pending = _Pending()
        self._overlap = ""
        self._windows: asyncio.Queue[_Window] = asyncio.Queue()
        self._releaser: asyncio.Task[None] | None = None
        self._write = asyncio.Lock()
        self._cut = False
        self._ending = False  # the answer's last message arrived, or it broke off

    async def feed(self, message: Message) -> None:
        """One message from the app, in order."""
        self.last_fed = time.monotonic()
        if self._cut:
            return
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] != "http.response.body":
            await self._forward(message)  # trailers and extensions pass as they are
        elif self._whole is not None:
            self._whole.append(message)
            if not message.get("more_body", False):
                self._ending = True
                await self._screen_whole()
        else:
            assert self._framer is not None
            last = not message.get("more_body", False)
            units = self._framer.feed(message.get("body", b""))
            if last:
                units += self._framer.flush()
            for unit in units:
                await self._add(unit)
            if last:
                self._ending = True
                self._close_window(then="finish")

    async def end_abruptly(self, reason: str) -> None:
        """The app stopped without finishing (idle, or it raised): screen the tail, then end.

        What was received is screened and released as usual; the policy's fail
        mode decides whether the stream then ends with a refusal.
        """
        if self._cut or self._ending or self.finished.is_set():
            return
        self._ending = True
        self.record.stream_cut = reason
        fail_closed = self.guard.policy.on_error != "allow"
        if self._framer is None:  # nothing streamed yet, or a complete answer cut short
            if fail_closed:
                await self._refuse_whole()
            elif self._whole:
                for message in self._whole:
                    await self._forward(message)
            self.finished.set()
            return
        for unit in self._framer.flush():
            await self._add(unit)
        self._close_window(then="refuse" if fail_closed else "finish")

    async def aclose(self) -> None:
        """Stop screening (the client left or the request ended)."""
        if self._releaser is not None:
            self._releaser.cancel()
            await asyncio.gather(self._releaser, return_exceptions=True)
        while not self._windows.empty():
            window = self._windows.get_nowait()
            if window.verdict is not None:
                window.verdict.cancel()

    # --- the start of the answer ---------------------------------------------------

    async def _start(self, message: Message) -> None:
        headers = Headers(raw=message.get("headers", []))
        sse = headers.get("content-type", "").startswith("text/event-stream")
        if (
            "content-length" in headers
            or headers.get("content-encoding", "identity") != "identity"
            or (not sse and self.stage.plain_text == "whole")
        ):
            # A complete (or compressed) answer: hold it whole, screen it once.
            self._whole = [message]
            return
        if sse:
            self._framer = SSEFramer(
                self.guard.adapter.event_text, max_event_bytes=self.stage.max_event_bytes
            )
        else:
            self._framer = TextFramer()
        self._releaser = asyncio.ensure_future(self._release_in_order())
        await self._forward(message)  # headers now: the body follows once screened

    # --- a complete answer -----------------------------------------------------------

    async def _screen_whole(self) -> None:
        assert self._whole is not None
        held, self._whole = self._whole, []
        encoded = Headers(raw=held[0].get("headers", [])).get("content-encoding", "identity")
        body = b"".join(m.get("body", b"") for m in held[1:])
        if encoded != "identity":
            assessment = None  # cannot read it, so cannot screen it: fail mode decides
            refuse = self.guard.policy.on_error != "allow"
            self.record.stream_cut = "error" if refuse else None
        else:
            assessment = await self.guard.assess(self.guard.adapter.answer_text(body), "output")
            self.record.outputs.append(assessment)
            refuse = assessment.decision in REFUSING
        if refuse:
            await self._refuse_whole()
        else:
            for message in held:
                await self._forward(message)
        self.finished.set()

    async def _refuse_whole(self) -> None:
        self._cut = True
        for message in self.guard.refusal(self.request).messages():
            await self._forward(message)

    # --- a streamed answer -----------------------------------------------------------

    async def _add(self, unit: Unit) -> None:
        pending = self._pending
        if not self.hold_back and not unit.done:
            await self._forward_live(unit.raw)
        else:
            # Optimistic mode still holds the end marker: clients stop reading at
            # [DONE], which would cancel the last window's screen unseen.
            pending.units.append(unit)
        pending.text += unit.text
        if len(pending.text) >= self.stage.window_chars:
            self._close_window()
        elif self.hold_back and not pending.text:
            self._close_window()  # no text waiting before this unit: release it now

    def _close_window(self, *, then: Literal["finish", "refuse"] | None = None) -> None:
        pending, self._pending = self._pending, _Pending()
        verdict = None
        if pending.text.strip():
            text = self._overlap + pending.text
            overlap = self.stage.overlap_chars
            self._overlap = text[-overlap:] if overlap else ""
            verdict = asyncio.ensure_future(self.guard.assess(text, "output"))
        self._windows.put_nowait(_Window(pending.units, verdict, then))

    async def _forward_live(self, raw: bytes) -> None:
        # Optimistic: released at once, screened alongside. Checked under the
        # lock so that nothing follows a refusal that won the race.
        async with self._write:
            if raw and not self._cut:
                await self._send({"type": "http.response.body", "body": raw, "more_body": True})

    async def _release_in_order(self) -> None:
        while True:
            window = await self._windows.get()
            if window.verdict is not None:
                assessment = await window.verdict
                self.record.outputs.append(assessment)
                if assessment.decision in REFUSING:
                    failed = assessment.screening.flag is None and assessment.panel is None
                    await self._cut_stream("error" if failed else "flag")
                    return
            for unit in window.units:
                if unit.raw:
                    await self._forward(
                        {"type": "http.response.body", "body": unit.raw, "more_body": True}
                    )
            if window.then == "refuse":
                await self._cut_stream(self.record.stream_cut or "error")
                return
            if window.then == "finish":
                await self._forward({"type": "http.response.body", "body": b""})
                self.finished.set()
                return

    async def _cut_stream(self, reason: str) -> None:
        self.record.stream_cut = self.record.stream_cut or reason
        message = self.guard.policy.refusal.message
        refusal = (
            self.guard.adapter.stream_refusal(self.request, message=message)
            if isinstance(self._framer, SSEFramer)
            else f"\n{message}\n".encode()
        )
        async with self._write:
            self._cut = True
            await self._send({"type": "http.response.body", "body": refusal})
        while not self._windows.empty():  # screens still running are not needed now
            window = self._windows.get_nowait()
            if window.verdict is not None:
                window.verdict.cancel()
        self.finished.set()

    async def _forward(self, message: Message) -> None:
        # Optimistic releases and a cut may race: one write at a time, whole.
        async with self._write:
            await self._send(message)
