"""The audit trail: one JSON record per guarded request, written off the event loop.

``Guard.observe`` hands each finished ``Record`` to ``AuditTrail.write``, which
only timestamps it and puts it on a bounded queue; a writer thread encodes it and
writes it to the ``guardrail.observe.audit`` logger or a rotating JSON-lines file, so no
request waits for a disk. A record that cannot be written (queue full, disk
error, trail closed) is counted in ``guardrail_audit_write_failures_total`` and
logged once per ``LOG_EVERY`` failures; it never changes a request's decision.

User text is not kept unless ``include_text`` says so: ``text_sha256`` is an
HMAC-SHA256 of it. With ``salt_env`` the salt is shared by every worker and
restart, so repeats of a text can be found across them, but whoever holds the
salt can also test a guessed text. Without it each process draws a random salt:
hashes match only within one process's life, and nobody can test guesses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache, partial
from logging.handlers import RotatingFileHandler
from typing import TYPE_CHECKING, Any

from guardrail.judges.base import JudgeFailure, JudgeResult, Verdict
from guardrail.policy.models import digest

if TYPE_CHECKING:
    from prometheus_client import Counter

    from guardrail.decide.guard import Assessment, Record
    from guardrail.decide.panel import PanelOutcome
    from guardrail.observe.metrics import GuardrailMetrics
    from guardrail.policy.models import Policy

log = logging.getLogger("guardrail")
AUDIT_LOGGER = "guardrail.audit"
LOG_EVERY = 100  # a failing sink logs its 1st failure, then one line per LOG_EVERY
_SEAT_FIELDS = ("judge", "state", "abstained", "cancelled", "attempts")
Sink = logging.Logger | logging.Handler  # a logger: the app's; a handler: the trail's own file
Encoder = Callable[["Record", datetime], dict[str, Any]]


def text_hash(salt: bytes, text: str) -> str:
    """The salted hash that stands for a text in audit records."""
    return hmac.new(salt, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def encode(
    record: Record, at: datetime, *, policy: str, version: str, salt: bytes, include_text: bool
) -> dict[str, Any]:
    """One request's audit record as JSON-ready data."""
    stages = [record.assessment] if record.assessment is not None else []
    stages += record.outputs
    judges = [r.judge for a in stages for r in a.screening.results]
    judges += [s.judge for a in stages if a.panel is not None for s in a.panel.seats]
    data: dict[str, Any] = {
        "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": uuid.uuid4().hex,
        "policy": policy,
        "policy_version": version,
        "decision": record.decision,
        "duration_s": _s(record.duration_s),
        "added_latency_s": _s(record.added_latency_s),
        "first_byte_s": _s(record.first_byte_s),
        "app_cancelled": record.app_cancelled,
        "rejected": record.rejected,
        "stream_cut": record.stream_cut,
        "redactions": dict(record.redactions),  # kinds and counts, never the values
        "text_sha256": None if record.text is None else text_hash(salt, record.text),
        "judges": list(dict.fromkeys(judges)),
        "input": _stage(record.assessment) if record.assessment is not None else None,
        "output": [_stage(a) for a in record.outputs],  # one per screened window of the answer
    }
    if include_text:
        data["text"] = record.text
    return data


def _stage(assessment: Assessment) -> dict[str, Any]:
    results = assessment.screening.results
    return {
        "decision": assessment.decision,
        "screens": [_result(r) for r in results],
        "panel": _panel(assessment.panel, assessment.trigger) if assessment.panel else None,
        # The pieces the flag names: where in the request, never their text.
        "flagged_pieces": [
            {"role": p.role, "message": p.message, "location": p.location}
            for p in assessment.screening.flagged_pieces
        ],
    }


def _panel(panel: PanelOutcome, trigger: str | None) -> dict[str, Any]:
    return {
        "trigger": trigger,
        "outcome": panel.ruling.outcome,
        "why": panel.ruling.reason,
        "ended": panel.ended,
        "duration_s": _s(panel.duration_s),
        "seats": [
            {**{k: getattr(s, k) for k in _SEAT_FIELDS}, "latency_s": _s(s.latency_s)}
            for s in panel.seats
        ],
    }


def _result(result: JudgeResult) -> dict[str, Any]:
    failed = result if isinstance(result, JudgeFailure) else None
    verdict = result if isinstance(result, Verdict) else None
    return {
        "judge": result.judge,
        "flagged": verdict.flagged if verdict else None,
        "categories": list(verdict.categories) if verdict else [],
        "reason": verdict.reason if verdict else failed.detail if failed else "",
        "failure": failed.reason if failed else None,
        "latency_s": _s(result.latency_s),
    }


def _s(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)  # microseconds: enough, and readable


class _RotatingFile(RotatingFileHandler):
    """The file sink's handler: JSON lines, rotated to ``path.1`` .. ``path.N``."""

    def handleError(self, record: logging.LogRecord) -> None:
        # Called inside ``emit``'s except: re-raise, so the trail counts the failure
        # instead of logging printing a traceback to stderr.
        raise


# One handler per file, shared: after a live reload the old and the new policy
# both write (the old one for requests still in flight), and two handlers
# rotating one file would lose records.
_files: dict[str, tuple[_RotatingFile, int]] = {}
_files_lock = threading.Lock()


def _open_file(path: str, max_bytes: int, backups: int) -> _RotatingFile:
    key = os.path.abspath(path)
    with _files_lock:
        handler, users = _files.get(key, (None, 0))
        if handler is None:
            # delay: opened by the writer thread, so a bad path fails by record, not at build.
            handler = _RotatingFile(key, maxBytes=max_bytes, backupCount=backups, delay=True)
        _files[key] = (handler, users + 1)
        return handler


def _release_file(handler: _RotatingFile) -> None:
    with _files_lock:
        _, users = _files.get(handler.baseFilename, (handler, 1))
        if users > 1:
            _files[handler.baseFilename] = (handler, users - 1)
            return
        _files.pop(handler.baseFilename, None)
    handler.close()


class AuditTrail:
    """Queues finished requests for a writer thread; ``write`` never blocks and never raises."""

    def __init__(self, sink: Sink, encode: Encoder, *, failures: Counter, queue_size: int):
        self.sink, self._encode, self._failures = sink, encode, failures
        self._queue: queue.Queue[tuple[datetime, Record] | None] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = 0

    def write(self, record: Record) -> None:
        """Queue one finished request's record; a full queue drops it and counts it."""
        try:
            if isinstance(self.sink, logging.Logger) and not self.sink.isEnabledFor(logging.INFO):
                return  # nothing would come out: the app's logging is not set for INFO
            with self._lock:  # so no record lands behind the sentinel that ``close`` queues
                if self._closed:
                    raise RuntimeError("the audit trail is closed")
                if self._thread is None:  # started by the first record, not at build
                    self._thread = threading.Thread(
                        target=self._drain, name="guardrail-audit", daemon=True
                    )
                    self._thread.start()
                # The request is finished: nothing changes the record after this.
                self._queue.put_nowait((datetime.now(UTC), record))
        except queue.Full:
            self._fail("the queue is full: the writer cannot keep up")
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                data = self._encode(item[1], item[0])
                line = json.dumps(data)
                if isinstance(self.sink, logging.Logger):
                    self.sink.info("%s", line, extra={"audit": data})
                else:
                    self.sink.handle(logging.makeLogRecord({"msg": line}))
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:
        self._failures.inc()
        with self._lock:
            self._failed += 1
            failed = self._failed
        if (failed - 1) % LOG_EVERY == 0:  # the 1st, then one in LOG_EVERY: no log flood
            log.warning("audit record not written (%s); %d so far", why, failed)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed, thread = True, self._thread
        try:
            if thread is not None:
                self._queue.put(None, timeout=timeout_s)
                thread.join(timeout_s)
        except queue.Full:
            log.warning("audit writer stuck: the records still queued are lost")
        if isinstance(self.sink, _RotatingFile):
            _release_file(self.sink)

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.to_thread(self.close)


def build_audit(policy: Policy, metrics: GuardrailMetrics) -> AuditTrail | None:
    """The policy's audit trail, or None when it keeps none."""
    settings = policy.audit
    if settings.sink == "none":
        return None
    sink: Sink = logging.getLogger(AUDIT_LOGGER)
    if settings.sink == "file":
        assert settings.path is not None  # policy-checked
        sink = _open_file(settings.path, settings.max_bytes, settings.backups)
    encoder = partial(
        encode,
        policy=policy.name,
        version=digest(policy.model_dump_json()),  # names exactly this validated policy
        salt=_salt(settings.salt_env),
        include_text=settings.include_text,
    )
    failures = metrics.audit_write_failures.labels(policy.name, settings.sink)
    return AuditTrail(sink, encoder, failures=failures, queue_size=settings.queue_size)


def _salt(env: str | None) -> bytes:
    value = os.environ.get(env) if env else None
    if env and not value:
        log.warning("audit.salt_env: %s is not set; text hashes use a per-process salt", env)
    return value.encode() if value else _process_salt()


@cache
def _process_salt() -> bytes:
    return secrets.token_bytes(32)
