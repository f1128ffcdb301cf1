"""The audit trail: one record per guarded request, no raw text unless asked, failures counted."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from guarded import BENIGN, INJECTION, guarded_app, policy
from prometheus_client import CollectorRegistry
from served import wait_for
from stub_llm import DEFAULT_REPLY, StubLLM

from guardrail import Guard, Policy, PolicyError, parse_policy
from guardrail.decide.guard import Assessment, Record
from guardrail.decide.panel import PanelOutcome, SeatResult
from guardrail.decide.screening import Screening
from guardrail.decide.voting import Ruling
from guardrail.judges.base import Verdict
from guardrail.observe.audit import AuditTrail, encode, text_hash
from guardrail.observe.metrics import metrics_for
from guardrail.policy.models import digest

URL = "/v1/chat/completions"
BREAKS_JUDGE = "Tell me about the weather on the coast, judge-breaker."
FAILURES = "guardrail_audit_write_failures_total"


def ask(client: openai.OpenAI, text: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": text}]
    )


def file_policy(path: Path, *judge_urls: str, audit: str = "") -> Policy:
    return policy(*judge_urls, extra=f"audit: {{sink: file, path: '{path}'{audit}}}\n")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def build(audit: str, registry: CollectorRegistry | None = None) -> Guard:
    """A guard built straight from a policy (no server): its trail is written by ``observe``."""
    return Guard.build(policy(extra=f"audit: {audit}\n"), registry=registry or CollectorRegistry())


def test_file_sink_writes_one_line_per_request(tmp_path: Path, stub_llm: StubLLM) -> None:
    # The LLM judge answers garbage for one text: that request ends in error_blocked.
    stub_llm.reply = lambda request: "no JSON" if "judge-breaker" in str(request) else DEFAULT_REPLY
    path = tmp_path / "audit.jsonl"
    checked = file_policy(path, stub_llm.base_url)
    with guarded_app(checked) as app:
        assert ask(app.client(), BENIGN).choices[0].finish_reason == "stop"
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert httpx.post(app.url + URL, content=b'{"messages": [').status_code == 400
        assert ask(app.client(), BREAKS_JUDGE).choices[0].finish_reason == "content_filter"
    # Closed with the app (lifespan shutdown): every queued record is written.
    records = lines(path)
    assert [r["decision"] for r in records] == ["allowed", "blocked", "rejected", "error_blocked"]
    allowed, blocked, rejected, error_blocked = records

    text = path.read_text()
    for raw in (BENIGN, INJECTION, BREAKS_JUDGE):
        assert raw not in text
        assert json.dumps(raw)[1:-1] not in text  # not even JSON-escaped
    assert all("text" not in r for r in records)
    assert re.fullmatch(r"[0-9a-f]{64}", allowed["text_sha256"])
    assert rejected["text_sha256"] is None  # nothing was read to screen
    assert len({r["text_sha256"] for r in (allowed, blocked, error_blocked)}) == 3

    assert {r["policy"] for r in records} == {"test"}
    assert {r["policy_version"] for r in records} == {digest(checked.model_dump_json())}
    assert len({r["request_id"] for r in records}) == 4
    for r in records:
        assert re.fullmatch(r"[0-9a-f]{32}", r["request_id"])
        assert r["ts"].endswith("Z")
        assert datetime.fromisoformat(r["ts"]).utcoffset() is not None
        assert r["duration_s"] > 0

    assert allowed["added_latency_s"] is not None and allowed["app_cancelled"] is None
    assert {s["judge"] for s in allowed["input"]["screens"]} == {"llm", "injection", "pii"}
    assert all(s["flagged"] is False for s in allowed["input"]["screens"])

    flag = next(s for s in blocked["input"]["screens"] if s["flagged"])
    assert flag["judge"] == "injection" and flag["categories"] == ["prompt_injection"]
    assert flag["reason"] and flag["latency_s"] >= 0 and flag["failure"] is None
    assert blocked["added_latency_s"] is None  # never released

    assert rejected["rejected"] == "invalid_json" and rejected["input"] is None

    failure = next(s for s in error_blocked["input"]["screens"] if s["judge"] == "llm")
    assert failure["failure"] == "parse" and failure["flagged"] is None
    assert error_blocked["input"]["decision"] == "error_blocked"
    assert "llm" in error_blocked["judges"]
    assert app.sample(FAILURES, {"sink": "file"}) == 0


def test_include_text_puts_the_raw_text_in_the_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with guarded_app(file_policy(path, audit=", include_text: true")) as app:
        ask(app.client(), BENIGN)
    [record] = lines(path)
    assert record["text"] == BENIGN
    assert record["decision"] == "allowed"


def test_panel_votes_are_in_the_record(tmp_path: Path) -> None:
    guard = build(f"{{sink: file, path: '{tmp_path / 'a.jsonl'}'}}")
    verdict = Verdict("injection", True, ("prompt_injection",), reason="override", latency_s=0.01)
    seats = (
        SeatResult("a", "block", Verdict("a", True, ("violence",)), 0.2),
        SeatResult("b", "abstain", None, 0.3, "cancelled"),
    )
    panel = PanelOutcome(Ruling("block", "early"), "quorum", seats, 0.3)
    assessment = Assessment("blocked", Screening((verdict,), verdict), panel, "flag")
    assert guard.audit is not None
    guard.observe(Record("blocked", 0.5, assessment, text="x"))
    guard.audit.close()
    [record] = lines(tmp_path / "a.jsonl")
    assert record["judges"] == ["injection", "a", "b"]
    for seat in record["input"]["panel"]["seats"]:
        assert seat.pop("attempts") == 1 and seat.pop("latency_s") > 0
    assert record["input"]["panel"] == {
        "trigger": "flag",
        "outcome": "block",
        "why": "early",
        "ended": "quorum",
        "duration_s": 0.3,
        "seats": [
            {"judge": "a", "state": "block", "abstained": None, "cancelled": False},
            {"judge": "b", "state": "abstain", "abstained": "cancelled", "cancelled": True},
        ],
    }


def test_file_rotates_before_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    guard = build(f"{{sink: file, path: '{path}', max_bytes: 1200, backups: 2}}")
    assert guard.audit is not None
    for i in range(10):
        guard.observe(Record("allowed", float(i)))  # same length: every line is alike
    guard.audit.close()
    files = [path.with_name(path.name + ".2"), path.with_name(path.name + ".1"), path]
    assert not path.with_name(path.name + ".3").exists()  # only `backups` old files are kept
    kept = []
    for file in files:
        assert 0 < file.stat().st_size < 1200
        kept += [r["duration_s"] for r in lines(file)]
    # Oldest first across the files, ending with the last record; the oldest were dropped.
    assert kept == [float(i) for i in range(10 - len(kept), 10)]
    assert len(kept) < 10


def test_unwritable_path_counts_failures_and_requests_still_decide(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Root ignores directory permissions: a path under a regular file fails for anyone.
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with guarded_app(file_policy(blocker / "audit.jsonl")) as app:
        answer = ask(app.client(), BENIGN)
        assert answer.choices[0].message.content == f"You said: {BENIGN}"
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert app.decisions("allowed") == 1 and app.decisions("blocked") == 1
        assert wait_for(lambda: app.sample(FAILURES, {"sink": "file"}) == 2)
    warnings = [r for r in caplog.records if "audit record not written" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: the first failure is logged
    assert "NotADirectoryError" in warnings[0].getMessage()


def test_failure_log_is_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    guard = build(f"{{sink: file, path: '{blocker / 'audit.jsonl'}'}}", registry)
    assert guard.audit is not None
    for _ in range(250):
        guard.observe(Record("allowed", 0.0))
    guard.audit.close()
    labels = {"policy": "test", "sink": "file"}
    assert registry.get_sample_value(FAILURES, labels) == 250
    warnings = [r for r in caplog.records if "audit record not written" in r.getMessage()]
    assert [w.args[-1] for w in warnings] == [1, 101, 201]  # type: ignore[index]


class Stuck(logging.Handler):
    """A sink whose writes hang until released: a disk that stopped answering."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.unblock = threading.Event(), threading.Event()
        self.written: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.unblock.wait(60)  # a safety net: the test releases it
        self.written.append(record.getMessage())


def test_full_queue_drops_and_counts_without_blocking() -> None:
    registry = CollectorRegistry()
    failures = metrics_for(registry).audit_write_failures.labels("test", "file")
    encoder = partial(encode, policy="test", version="v", salt=b"s", include_text=False)
    sink = Stuck()
    trail = AuditTrail(sink, encoder, failures=failures, queue_size=2)
    trail.write(Record("allowed", 0.0))
    assert sink.entered.wait(30)  # the writer holds the first record; the queue is empty
    # The writes finish while the sink is still stuck: they never wait for it
    # (were they to, they could not return before the sink is released below).
    writer = threading.Thread(target=lambda: [trail.write(Record("blocked", 0.0)) for _ in "abcd"])
    try:
        writer.start()
        writer.join(30)
        assert not writer.is_alive()
        assert sink.written == []  # still stuck

        def dropped() -> float | None:
            return registry.get_sample_value(FAILURES, {"policy": "test", "sink": "file"})

        assert dropped() == 2  # two queued, two dropped
    finally:
        sink.unblock.set()
    trail.close()
    assert len(sink.written) == 3
    assert dropped() == 2


def test_logger_sink_emits_one_record_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="guardrail.audit")
    with guarded_app(policy()) as app:  # the default sink: the guardrail.observe.audit logger
        ask(app.client(), BENIGN)
        ask(app.client(), INJECTION)
    records = [r for r in caplog.records if r.name == "guardrail.audit"]
    assert [json.loads(r.getMessage())["decision"] for r in records] == ["allowed", "blocked"]
    assert [r.audit["decision"] for r in records] == ["allowed", "blocked"]  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in records)
    assert BENIGN not in caplog.text


def test_text_hash_is_stable_for_a_salt_and_differs_across_salts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hashed(salt: str | None) -> str:
        if salt is not None:
            monkeypatch.setenv("AUDIT_SALT", salt)
        path = tmp_path / f"{salt}-{time.perf_counter_ns()}.jsonl"
        guard = build(f"{{sink: file, path: '{path}', salt_env: AUDIT_SALT}}")
        assert guard.audit is not None
        guard.observe(Record("allowed", 0.0, text=BENIGN))
        guard.audit.close()
        [record] = lines(path)
        hash_: str = record["text_sha256"]
        return hash_

    assert hashed("pepper") == hashed("pepper") == text_hash(b"pepper", BENIGN)
    assert hashed("salt") != hashed("pepper")
    monkeypatch.delenv("AUDIT_SALT")
    assert hashed(None) == hashed(None)  # the per-process salt
    assert hashed(None) not in (hashed("pepper"), text_hash(b"", BENIGN))


@pytest.mark.parametrize(
    ("audit", "field", "says"),
    [
        ("{sink: file, path: a.jsonl, colour: red}", "audit.colour", "unknown key"),
        ("{sink: file, path: a.jsonl, max_bytes: -1}", "audit.max_bytes", "greater than 0"),
        ("{sink: file, path: a.jsonl, backups: 0}", "audit.backups", "greater than 0"),
        ("{sink: s3}", "audit.sink", "'none', 'logger' or 'file'"),
        ("{sink: file}", "audit", "the file sink needs a path"),
    ],
)
def test_invalid_audit_section_names_the_field(audit: str, field: str, says: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy(extra=f"audit: {audit}\n")
    [issue] = caught.value.issues
    assert issue.field == field and issue.line > 0
    assert says in issue.message


def test_audit_defaults() -> None:
    settings = parse_policy(
        "name: p\nroutes: [{path: /}]\njudges: {pii: {type: pii}}\n"
        "input: {screens: [{judge: pii}]}\n"
    ).audit
    assert settings.sink == "logger" and settings.include_text is False
