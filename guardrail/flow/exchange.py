"""One guarded request: read, screen while the app runs, then release or refuse.

By default (``input.start_app: parallel``) the app runs from the start, in
parallel with the screens, so an allowed request costs ``max(app, screen)``.
Its response is held (``Hold``) until the verdict; a refusal cancels it, which
stops its upstream LLM call, but the app did receive the request. With
``after_verdict`` the app is started only once the verdict allows the request:
a refused one (or one whose client left while it was screened) never reaches
it, and an allowed one costs ``screen + app``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.adapters import BadRequest, ChatRequest, Reply
from guardrail.decide.decision import REFUSING, Decision
from guardrail.decide.guard import Assessment, Guard, Record
from guardrail.decide.redaction import redact_request
from guardrail.flow.answer_redaction import answer_redactor
from guardrail.flow.body import ClientGone, check_media_type, decode, parse, read_body
from guardrail.flow.hold import Hold
from guardrail.flow.output import AnswerScreen
from guardrail.flow.restore import Restorer
from guardrail.flow.rewrite import flow_texts
from guardrail.flow.routing import query_text, route_path
from guardrail.observe.metrics import child

log = logging.getLogger("guardrail")

# An ASGI scope extension: a dict the app may write {"outcome": "app_error"} into
# when it failed to answer (the proxy, when its upstream is unreachable).
REPORT_EXTENSION = "guardrail.report"


class GuardedExchange:
    """The state of one guarded request; built per request, never shared."""

    def __init__(self, app: ASGIApp, guard: Guard, scope: Scope, receive: Receive, send: Send):
        self.app, self.guard = app, guard
        self.scope, self.receive, self.send = scope, receive, send
        self.record = Record("abandoned", 0.0)
        self.disconnected = asyncio.Event()
        self.started = time.perf_counter()
        self.sent_all_at: float | None = None  # the response's last byte went to the server
        self.app_report: dict[str, str] = {}  # what the app reports (REPORT_EXTENSION)
        self.app_task: asyncio.Future[None] | None = None  # None until the app is started
        # The API of the route this request came on: how its body, answer and refusal read.
        self.adapter = guard.adapter_for(scope["method"], route_path(scope))
        self.restorer: Restorer | None = None  # puts redacted values back into the answer
        self.issued: frozenset[str] = frozenset()  # the placeholders the app was given

    async def run(self) -> None:
        """Guard the request; count it whatever happens, and re-raise the app's errors."""
        in_flight = child(self.guard.metrics.in_flight, self.guard.policy.name)
        in_flight.inc()
        try:
            await self._run()
        finally:
            if self.record.decision == "allowed" and self.app_report.get("outcome") == "app_error":
                self.record.decision = "app_error"
            if self.record.decision == "allowed" and self.record.redactions:
                self.record.decision = "redacted"
            for kind, n in self.record.redactions.items():
                child(self.guard.metrics.redactions, self.guard.policy.name, kind).inc(n)
            self.record.duration_s = time.perf_counter() - self.started
            self.guard.observe(self.record)
            in_flight.dec()  # last, so a request that is not in flight is counted

    async def _run(self) -> None:
        try:
            body, app_scope = await self._read()
            request = await parse(self.adapter, body)
            if request.deferred and self.guard.output_screens:
                raise BadRequest(
                    "deferred_answer",
                    "this request's answer is fetched later, where it cannot be screened:"
                    " send it without 'background'",
                )
            # The receiver reads the query string too: its text is screened with the body.
            text = self.record.text = "\n".join(
                filter(None, (request.text, query_text(self.scope)))
            )
            # --- redaction: the app and the screens get the request with placeholders ---
            redacting = await redact_request(
                self.guard,
                body,
                text,
                query_text(self.scope),
                read=lambda given: self.adapter.parse_request(given).text,
            )
            if (redaction := redacting.redaction) is not None:
                body, app_scope = redaction.body, _with_length(app_scope, len(redaction.body))
                request = await parse(self.adapter, body)
                text = self.record.text = "\n".join(
                    filter(None, (request.text, query_text(self.scope)))
                )
                self.record.redactions = dict(redaction.counts)
                self.issued = redaction.issued
                if redaction.restorable:
                    flows = flow_texts(self.adapter)
                    self.restorer = Restorer(redaction.restorable, flows)
        except ClientGone:
            return
        except BadRequest as exc:
            self.record.decision, self.record.rejected = "rejected", exc.code
            await self._reply(self.adapter.error(exc))
            return
        watcher = asyncio.ensure_future(self._watch_disconnect())
        hold = Hold(self._to_client)
        extensions = {**(app_scope.get("extensions") or {}), REPORT_EXTENSION: self.app_report}
        app_scope = {**app_scope, "extensions": extensions}

        def start_app() -> asyncio.Future[None]:
            # The output stage's idle clock runs from the app's start, not the
            # screening an after_verdict app waited through.
            hold.last_message_at = time.monotonic()
            self.app_task = asyncio.ensure_future(self.app(app_scope, self._replay(body), hold))
            return self.app_task

        if self.guard.policy.input.start_app == "parallel" and not redacting.failed:
            start_app()
        # Screened piece by piece (``Guard.assess_request``): ``text`` is what the panel reads.
        query = query_text(self.scope)
        verdict_task = asyncio.ensure_future(self.guard.assess_request(request, query))
        try:
            await self._respond(request, hold, start_app, verdict_task, watcher)
        finally:
            for task in (watcher, verdict_task, self.app_task):
                if task is not None:
                    task.cancel()  # no-op for finished tasks; ends ours if we were cancelled

    async def _respond(
        self,
        request: ChatRequest,
        hold: Hold,
        start_app: Callable[[], asyncio.Future[None]],
        verdict_task: asyncio.Future[Assessment],
        watcher: asyncio.Future[None],
    ) -> None:
        first: set[asyncio.Future[Assessment] | asyncio.Future[None]] = {verdict_task, watcher}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not verdict_task.done():  # the client left before the verdict
            verdict_task.cancel()
            await self._cancel_app(self.app_task, "client_disconnected")
            return
        assessment = self.record.assessment = verdict_task.result()
        self.record.decision = decision = assessment.decision
        if decision in REFUSING:
            await self._cancel_app(self.app_task, "blocked")
            if self.record.app_cancelled == "blocked":  # it was generating: what it would have
                self.record.app_tokens_saved = request.max_tokens
            await self._reply(self.guard.refusal(request, assessment, self.adapter))
            return
        if self.app_task is None:  # after_verdict: the request is allowed, start the app now
            if watcher.done():
                # The client left as the verdict came: nobody to answer, so an app
                # with side effects is not started for it. Nothing was cancelled.
                return
            start_app()
        app_task = self.app_task
        assert app_task is not None
        if self.guard.output_screens:
            await self._release_screened(request, hold, app_task, watcher)
            return
        await hold.release()
        await asyncio.wait({app_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not app_task.done() and self.sent_all_at is None:
            # Gone mid-answer. (A disconnect after the last byte is just the
            # server saying the response is complete: let the app finish.)
            await self._cancel_app(app_task, "client_disconnected")
            return
        await app_task  # re-raises the app's own exception: we do not swallow it
        self._note_added_latency(hold)

    async def _release_screened(
        self,
        request: ChatRequest,
        hold: Hold,
        app_task: asyncio.Future[None],
        watcher: asyncio.Future[None],
    ) -> None:
        """Release the answer through the output screens; stop the app if it was cut.

        ``idle_timeout_s`` is silence from the app's last message (or its start):
        a deadline moved by every message, so a healthy app answering in pieces
        is never cut, and a silent one is cut when its deadline passes.
        """
        assert self.guard.policy.output is not None
        idle_s = self.guard.policy.output.idle_timeout_s
        answer = AnswerScreen(self.guard, request, self._to_client, self.record, self.adapter)
        finished: asyncio.Future[None] = asyncio.ensure_future(self._until(answer.finished))
        redactor = answer_redactor(self.guard, self.issued, self.adapter)  # output.on_flag: redact
        try:
            await hold.release(
                to=answer.feed if redactor is None else redactor.feeding(answer.feed)
            )
            while not finished.done():
                if watcher.done() and self.sent_all_at is None:
                    await self._cancel_app(app_task, "client_disconnected")
                    return
                if app_task.done():
                    # Broke off (it raised, or returned without finishing its answer):
                    # release what passed, then end by the fail mode. A no-op otherwise.
                    await answer.end_abruptly("app_error")
                    await asyncio.wait({finished, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                silent_until = hold.last_message_at + idle_s
                if time.monotonic() >= silent_until:
                    await answer.end_abruptly("idle")
                    await self._cancel_app(app_task, "idle")
                    continue
                await asyncio.wait(
                    {finished, watcher, app_task},
                    timeout=silent_until - time.monotonic(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            finished.cancel()
            await answer.aclose()
            if redactor is not None:
                counts = redactor.counts + Counter(self.record.redactions)
                self.record.redactions = dict(counts)
        self.record.decision = _after_output(self.record, self.guard.policy.on_error)
        if answer.app_failed:
            self.record.decision = "app_error"  # nothing usable came: an error reply, not a refusal
        elif answer.unscreened and self.record.decision == "allowed":
            self.record.decision = "error_allowed"  # fail-open released what we could not read
        if self.record.stream_cut is not None and not app_task.done():
            await self._cancel_app(app_task, "blocked")
            if request.max_tokens and self.record.app_cancelled == "blocked":
                # What it had left to generate: its limit less what it sent.
                left = request.max_tokens - answer.generated_tokens
                self.record.app_tokens_saved = max(0, left)
        elif not app_task.cancelled():
            await app_task  # the app's own exception is re-raised, not swallowed
        self._note_added_latency(hold)

    @staticmethod
    async def _until(event: asyncio.Event) -> None:
        await event.wait()

    def _note_added_latency(self, hold: Hold) -> None:
        if hold.completed_at is not None and self.sent_all_at is not None:
            self.record.added_latency_s = max(0.0, self.sent_all_at - hold.completed_at)

    async def _to_client(self, message: Message) -> None:
        """Every message for the client passes here, so its timing is measured once."""
        if self.restorer is None:
            await self._sent(message)
            return
        for restored in await self.restorer.feed(message):
            await self._sent(restored)

    async def _sent(self, message: Message) -> None:
        await self.send(message)
        if message["type"] == "http.response.body":
            now = time.perf_counter()
            if self.record.first_byte_s is None and message.get("body"):
                self.record.first_byte_s = now - self.started
            if not message.get("more_body", False):
                self.sent_all_at = now

    async def _read(self) -> tuple[bytes, Scope]:
        policy = self.guard.policy
        headers = Headers(scope=self.scope)
        check_media_type(headers.getlist("content-type"))
        raw = await read_body(
            self.receive, cap=policy.max_body_bytes, content_length=headers.get("content-length")
        )
        encoding = headers.get("content-encoding")
        body = decode(raw, encoding=encoding, cap=policy.max_body_bytes)
        if body is raw:
            return body, self.scope
        # The app gets the decoded body we screened, with headers that say so: no
        # Content-Encoding, and only a Content-Length (a chunked request's
        # Transfer-Encoding beside it would give a relaying app two framings).
        kept = [(k, v) for k, v in self.scope["headers"] if k.lower() != b"content-encoding"]
        return body, _with_length({**self.scope, "headers": kept}, len(body))

    def _replay(self, body: bytes) -> Receive:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.disconnected.wait()
            return {"type": "http.disconnect"}

        return receive

    async def _watch_disconnect(self) -> None:
        # The only reader of the real receive once the body is in: the app
        # reads the replay, which learns of a disconnect from here.
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()

    async def _cancel_app(self, app_task: asyncio.Future[None] | None, reason: str) -> None:
        if app_task is None:  # after_verdict, and it was never started: nothing to cancel
            return
        if app_task.done():
            if not app_task.cancelled() and app_task.exception() is not None:
                log.warning(
                    "the app raised on a request that was not released",
                    exc_info=app_task.exception(),
                )
            return
        app_task.cancel()
        await asyncio.gather(app_task, return_exceptions=True)
        self.record.app_cancelled = reason

    async def _reply(self, reply: Reply) -> None:
        for message in reply.messages():
            await self._to_client(message)


def _with_length(scope: Scope, length: int) -> Scope:
    """The scope with its Content-Length set to the rewritten body's (sent whole: not chunked)."""
    dropped = (b"content-length", b"transfer-encoding")
    kept = [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]
    return {**scope, "headers": [*kept, (b"content-length", str(length).encode())]}


def _after_output(record: Record, on_error: str) -> Decision:
    """The request's decision once its answer was screened: a refusal anywhere wins."""
    decision = record.decision
    for output in record.outputs:
        if output.decision in REFUSING:
            return output.decision
        if decision == "allowed":
            decision = output.decision
    if record.stream_cut in ("idle", "app_error", "error"):  # broke off, or unreadable
        return "error_allowed" if on_error == "allow" else "error_blocked"
    return decision
