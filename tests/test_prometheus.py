"""The shipped observability (examples/observability) against a real Prometheus.

promtool checks the rules, runs their unit tests and checks the compose
config. Then a real Prometheus, with the shipped rules loaded, scrapes a
guarded app every second while the real openai client sends it known traffic;
every PromQL expression of the dashboard and of the rules is evaluated through
the HTTP API, and the key values must match the traffic exactly.

Exactness: the dashboard's queries are evaluated at the first scrape after the
traffic, over a window reaching back exactly to the last scrape before it.
Every series exists at both ends (a warm-up round created them), so
``increase`` is the plain difference and ``rate`` that difference over the
window: no extrapolation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from guarded import BENIGN, CARD, INJECTION, Guarded, guarded_app
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_server import Labels, Prometheus, free_port, require_binary
from served import Served, wait_for
from stub_llm import StubLLM

from examples.chat_app import create_app
from guardrail import GuardrailMiddleware, Policy, parse_policy
from guardrail.observe.metrics import _LATENCY_BUCKETS

OBSERVABILITY = Path(__file__).resolve().parents[1] / "examples" / "observability"
RULES = OBSERVABILITY / "prometheus" / "rules.yml"
RULES_TEST = OBSERVABILITY / "prometheus" / "rules_test.yml"
COMPOSE_CONFIG = OBSERVABILITY / "prometheus" / "prometheus.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "guardrail-dashboard.json"

SAFE = '{"flagged": false, "categories": [], "reason": "fine"}'
UNSAFE = '{"flagged": true, "categories": ["prompt_injection"], "reason": "injection"}'
# A card number the pii screen flags and the panel cannot rule on (a Luhn-valid
# test number, unlike CARD's, so the panel stub can tell them apart).
UNRULED = "My other card is 5555 5555 5555 4444, keep it too."


# --- the files themselves --------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_accepts_the_rules() -> None:
    checked = _promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    tested = _promtool("test", "rules", RULES_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_shipped_config_scrapes_a_target_given_on_the_command_line(tmp_path: Path) -> None:
    """Outside compose: ``serve HOST:PORT`` runs the shipped config and rules against it."""
    binary = require_binary("prometheus")
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS": binary,
        "PROMETHEUS_LISTEN": f"127.0.0.1:{port}",
        "PROMETHEUS_DIR": str(tmp_path),
        "PROMETHEUS_SCRAPE_INTERVAL": "1s",
    }
    app = create_app(registry=CollectorRegistry())  # the default policy serves /metrics
    with Served(app) as served, (tmp_path / "prometheus.log").open("wb") as log:
        target = served.url.removeprefix("http://")
        command = [str(COMPOSE_CONFIG.parent / "serve"), target, "--", "--log.level=warn"]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            api = f"http://127.0.0.1:{port}/api/v1"

            def scraped() -> bool:
                try:
                    query = {"query": 'up{job="guardrail"} == 1'}
                    found = httpx.get(f"{api}/query", params=query).json()["data"]["result"]
                except (httpx.HTTPError, ValueError, KeyError):
                    return False
                return [r["metric"]["instance"] for r in found] == [target]

            assert wait_for(scraped, timeout=60), (tmp_path / "prometheus.log").read_text()
            groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
            assert sum(len(g["rules"]) for g in groups) == len(_rules())
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    # It names rules.yml relative to itself, so its rules are checked too.
    checked = _promtool("check", "config", COMPOSE_CONFIG.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    exprs = {t["expr"] for test in tests for t in test.get("promql_expr_test", [])}
    alert_tests = [t for test in tests for t in test.get("alert_rule_test", [])]
    for rule in _rules():
        if "record" in rule:
            assert rule["record"] in exprs, f"no promql_expr_test of {rule['record']}"
        else:
            name = rule["alert"]
            outcomes = {bool(t["exp_alerts"]) for t in alert_tests if t["alertname"] == name}
            assert outcomes == {True, False}, f"{name} needs a firing and a quiet test"


def _expand(values: str) -> list[Fraction]:
    """promtool's series notation (``0+30x360``, ``0x10 6+6x20``) as its samples."""
    samples: list[Fraction] = []
    for term in values.split():
        match = re.fullmatch(r"(-?[\d.]+)(?:([+-][\d.]+))?x(\d+)", term)
        if match is None:
            samples.append(Fraction(term))
            continue
        start, step, times = match.groups()
        samples += [Fraction(start) + Fraction(step or 0) * i for i in range(int(times) + 1)]
    return samples


def _exact_rate(step: Fraction) -> bool:
    """Whether Prometheus computes the rate of a counter growing ``step`` a minute exactly.

    It multiplies the increase by ``1 / window`` (itself rounded): the result
    must be the true rate for every window the rules use (5m, 30m, 1h, 6h, and
    1d over the tests' 6 hours of data).
    """
    windows = ((5, 5), (30, 30), (60, 60), (360, 360), (360, 1440))
    return all(
        float(step * data) * (1.0 / (window * 60.0)) == step * data / (window * 60)
        for data, window in windows
    )


def test_rule_tests_expect_only_exact_sums() -> None:
    """Where promtool compares values, every rate is exact in binary floating point.

    promtool compares exactly, and ``sum`` adds series in no fixed order: rates
    like 1/6 and 1/12 summed to 0.25 in one run and 0.25000000000000006 in the
    next. Exact rates add up exactly in any order.
    """
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert tests["evaluation_interval"] == "1m"
    inexact = []
    for test in tests["tests"]:
        if not test.get("promql_expr_test"):
            continue
        assert test["interval"] == "1m", test["name"]
        for series in test["input_series"]:
            samples = _expand(series["values"])
            for step in {b - a for a, b in itertools.pairwise(samples)}:
                if not _exact_rate(step):
                    inexact.append(f"{test['name']}: {series['series']} steps by {step}")
    assert not inexact, "\n".join(inexact)


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])  # a collapsed row keeps its panels
        else:
            yield panel


def test_the_dashboard_queries_prometheus_through_template_variables() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["policy"]["type"] == "query"
    assert variables["policy"]["definition"] == "label_values(guardrail_requests_total, policy)"
    panels = list(_panels(dashboard))
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'policy=~"$policy"' in target["expr"], panel["title"]
    titles = {p["title"] for p in panels}
    assert {
        "Block rate",
        "Decisions over time",
        "Added latency p50 / p95 / p99",
        "Judge latency p95",
        "Judge error rate",
        "Panel escalations",
        "Overturn rate and agreement",
        "Cancelled generations",
        "Requests in flight",
        "Fail-open decisions",
    } <= titles


# --- known traffic, scraped by a real Prometheus ----------------------------


@dataclass(frozen=True)
class Traffic:
    """How many requests to send of each kind; each kind ends in one known decision."""

    allowed: int  # benign: every screen passes
    blocked: int  # injection: flagged, the panel agrees, the app is cancelled
    overturned: int  # card number: flagged, the panel overturns it (flagged_allowed)
    failed_open: int  # benign while the LLM screen answers 500: error_allowed
    failed_closed: int  # another card number: flagged, the panel has no quorum: error_blocked
    rejected: int  # not JSON: refused unscreened

    @property
    def decisions(self) -> dict[str, int]:
        return {
            "allowed": self.allowed,
            "blocked": self.blocked,
            "flagged_allowed": self.overturned,
            "error_allowed": self.failed_open,
            "error_blocked": self.failed_closed,
            "rejected": self.rejected,
            "abandoned": 0,
            "app_error": 0,
            "redacted": 0,  # this policy redacts nothing (tests/test_redaction.py does)
        }

    @property
    def total(self) -> int:
        return sum(self.decisions.values())

    @property
    def escalated(self) -> int:
        return self.blocked + self.overturned + self.failed_closed


WARM_UP = Traffic(allowed=1, blocked=1, overturned=1, failed_open=1, failed_closed=1, rejected=1)
TRAFFIC = Traffic(allowed=6, blocked=3, overturned=1, failed_open=2, failed_closed=1, rejected=1)
# Decisions since the app started: the counters' values at the end.
SENT = {d: WARM_UP.decisions[d] + TRAFFIC.decisions[d] for d in TRAFFIC.decisions}
SENT_BLOCK_RATE = (SENT["blocked"] + SENT["error_blocked"]) / sum(SENT.values())


def _policy(screen: StubLLM, panel: StubLLM, straggler: StubLLM, audit: Path) -> Policy:
    """An LLM screen and two local ones; flags go to a panel whose third seat is slow.

    Two votes are needed: when a and b both fail, the panel has no quorum at once.
    """
    return parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        f"  screen: {{type: llm, model: openai/screen, api_base: '{screen.base_url}'}}\n"
        "  injection: {type: injection}\n"
        "  pii: {type: pii}\n"
        f"  a: {{type: llm, model: openai/judge-a, api_base: '{panel.base_url}'}}\n"
        f"  b: {{type: llm, model: openai/judge-b, api_base: '{panel.base_url}'}}\n"
        f"  c: {{type: llm, model: openai/judge-c, api_base: '{straggler.base_url}'}}\n"
        "input:\n"
        "  screens:\n"
        # Generous: on a loaded machine a stub's answer may take a while; the
        # traffic's slow screens are cut off by the local flags, never timed out.
        "    - {judge: screen, timeout_s: 10.0}\n"
        "    - {judge: injection, timeout_s: 10.0}\n"
        "    - {judge: pii, timeout_s: 10.0}\n"
        "on_flag: vote\n"
        "on_error: allow\n"
        "panel:\n"
        "  judges: [{judge: a}, {judge: b}, {judge: c}]\n"
        "  quorum: majority\n"
        "  min_votes: 2\n"
        "  deadline_s: 10\n"
        "  on_no_quorum: block\n"
        "  overturns: [screen, injection, pii]\n"  # pii flags are final unless listed
        f"audit: {{sink: file, path: '{audit}'}}\n"
    )


def _panel_reply(request: dict[str, Any]) -> str:
    """The panel blocks the injection, overturns CARD's flag, and fails on UNRULED."""
    text = request["messages"][-1]["content"]
    # With its spaces: the judge prompt's random hex boundary may hold "5555"
    # (about one prompt in 300), and must not turn a vote into an abstention.
    if "5555 5555" in text:
        return "no verdict here"
    return UNSAFE if "system prompt" in text else SAFE


_FRESH = itertools.count()


def _play(app: Guarded, screen: StubLLM, upstream: StubLLM, traffic: Traffic) -> float:
    """Send ``traffic``, checking each answer; return when its metrics are all written."""
    client = app.client()

    def ask(text: str) -> str | None:
        answer = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": text}]
        )
        return answer.choices[0].finish_reason

    # Each a text not screened before: a piece that passed is not asked about
    # again (the verdict cache), and the judge counts below expect every one asked.
    for _ in range(traffic.allowed):
        assert ask(f"{BENIGN} Question {next(_FRESH)}.") == "stop"
    # A local screen flags first: the slow LLM screen is cut off (no answer to
    # count), and the refusal cancels the app's slow upstream call.
    screen.latency_s = upstream.latency_s = 30.0
    for _ in range(traffic.blocked):
        assert ask(INJECTION) == "content_filter"
    for _ in range(traffic.failed_closed):
        assert ask(UNRULED) == "content_filter"
    upstream.latency_s = 0.0
    for _ in range(traffic.overturned):
        assert ask(CARD) == "stop"
    screen.latency_s, screen.status = 0.0, 500
    for _ in range(traffic.failed_open):
        assert ask(f"{BENIGN} Asked while the judge fails, {next(_FRESH)}.") == "stop"
    screen.status = 200
    for _ in range(traffic.rejected):
        response = httpx.post(
            app.url + "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400
    app.settled()
    return time.time()


def _scrape_after(prom: Prometheus, moment: float) -> float:
    """The timestamp of the first scrape of the app that started after ``moment``."""
    latest = 'max(timestamp(guardrail_requests_total{policy="test"}))'
    found: list[float] = []

    def scraped() -> bool:
        found[:] = [prom.value(latest)]
        return found[0] > moment

    assert prom.wait_until(scraped), f"no scrape after {moment}:\n{prom.log_tail()}"
    return found[0]


def _evaluated_after(prom: Prometheus, moment: float) -> float:
    """The timestamp of the first evaluation of the shipped rules after ``moment``."""
    recorded = 'timestamp(guardrail:block_rate:ratio_rate5m{policy="test"})'
    found: list[float] = []

    def evaluated() -> bool:
        found[:] = [prom.value(recorded)]
        return found[0] > moment

    assert prom.wait_until(evaluated), f"no rule evaluation after {moment}:\n{prom.log_tail()}"
    return found[0]


@dataclass
class Observed:
    """Prometheus after the traffic: ``base`` and ``last`` are the scrapes around it.

    Before any traffic, ``first`` and ``idle`` are the app's first two scrapes
    (an idle policy), and ``idle_rules`` an evaluation of the rules after them;
    ``rules`` is an evaluation of the rules after ``last``.
    """

    prom: Prometheus
    base: float
    last: float
    audit: Path  # the guarded app's audit trail (JSON lines)
    first: float = 0.0
    idle: float = 0.0
    idle_rules: float = 0.0
    rules: float = 0.0

    @property
    def window_s(self) -> float:
        return round(self.last - self.base, 3)

    @property
    def window(self) -> str:
        """The window as a PromQL duration."""
        return f"{round(self.window_s * 1000)}ms"

    def substitute(self, expr: str, window: str | None = None) -> str:
        """A dashboard expression as Grafana would send it, over the traffic's window."""
        window = window or self.window
        for name in ("__rate_interval", "__range", "__interval"):
            expr = expr.replace("${" + name + "}", window).replace("$" + name, window)
        return expr.replace("${policy}", "test").replace("$policy", "test")

    def at_last(self, expr: str) -> dict[Labels, float]:
        return self.prom.vector(expr, self.last)

    def at_rules(self, expr: str) -> dict[Labels, float]:
        """At the first rule evaluation after the traffic: what recording rules and
        alerts say of all of it. (At ``last`` they say what their last evaluation
        before it saw, which may have come before any traffic was scraped.)"""
        return self.prom.vector(expr, self.rules)

    def at_its_moment(self, expr: str) -> dict[Labels, float]:
        """A dashboard query where it reads the whole traffic: on recorded series
        (``guardrail:...``) after the rules ran, on raw ones at the last scrape."""
        recorded = re.search(r"\bguardrail:\w", expr) is not None
        return self.at_rules(expr) if recorded else self.at_last(expr)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    binary = require_binary("prometheus")
    with ExitStack() as stack:
        screen = stack.enter_context(StubLLM())
        panel = stack.enter_context(StubLLM(reply=_panel_reply))
        straggler = stack.enter_context(StubLLM(reply=SAFE, latency_s=30.0))
        upstream = stack.enter_context(StubLLM())
        audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
        policy = _policy(screen, panel, straggler, audit)
        app = stack.enter_context(guarded_app(policy, upstream.base_url))
        prom = stack.enter_context(
            Prometheus(
                binary,
                tmp_path_factory.mktemp("prometheus"),
                targets=[f"127.0.0.1:{app.served.port}"],
                rule_files=[RULES],
            )
        )
        # The policy's series at zero, before any traffic: twice, so that rates
        # over the idle policy exist, and the rules evaluated over them.
        first = _scrape_after(prom, 0.0)
        idle = _scrape_after(prom, first)
        idle_rules = _evaluated_after(prom, idle)
        # The warm-up touches every series the traffic does; the traffic's
        # window starts at the scrape after it (``base``).
        base = _scrape_after(prom, _play(app, screen, upstream, WARM_UP))
        last = _scrape_after(prom, _play(app, screen, upstream, TRAFFIC))
        rules = _evaluated_after(prom, last)
        yield Observed(prom, base, last, audit, first, idle, idle_rules, rules)


def _panel_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel's PromQL expressions."""
    return [
        (f"{p['type']} {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels(_dashboard())
        for t in p["targets"]
    ]


def test_every_panel_query_gives_finite_values(observed: Observed) -> None:
    queries = _panel_queries()
    assert len(queries) >= 25
    wrong = []
    for where, expr in queries:
        found = observed.at_its_moment(observed.substitute(expr))
        if not found or not all(math.isfinite(v) for v in found.values()):
            wrong.append(f"{where}: {observed.substitute(expr)} -> {found}")
    assert not wrong, "\n".join(wrong)


def test_the_annotation_queries_mark_alerts_and_reloads(observed: Observed) -> None:
    found = {
        a["name"]: observed.at_rules(observed.substitute(a["expr"]))
        for a in _dashboard()["annotations"]["list"]
        if "expr" in a
    }
    assert _by(found["guardrail alerts"], "alertname", "policy") == {
        ("GuardrailFailOpen", "test"): 1
    }
    assert found["policy reloads"] == {}  # none happened


def test_the_policy_variable_lists_the_policy(observed: Observed) -> None:
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "policy")
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match is not None
    metric, label = match.groups()
    assert observed.prom.api(f"label/{label}/values", **{"match[]": metric}) == ["test"]


def _panel(observed: Observed, title: str, kind: str = "timeseries", ref: str = "A") -> str:
    for panel in _panels(_dashboard()):
        if (panel["title"], panel["type"]) == (title, kind):
            expr = next(t["expr"] for t in panel["targets"] if t["refId"] == ref)
            return observed.substitute(expr)
    raise LookupError(f"no {kind} panel {title!r}")


def _by(found: dict[Labels, float], *labels: str, scale: float = 1.0) -> dict[Any, float]:
    """Values keyed by the given labels' values (one label: the value itself)."""
    keyed: dict[Any, float] = {}
    for series, value in found.items():
        names = dict(series)
        key = tuple(names[label] for label in labels)
        keyed[key[0] if len(key) == 1 else key] = value * scale
    return keyed


def _close(found: Mapping[Any, float], expected: Mapping[Any, float]) -> bool:
    # Series the guard creates at zero (so rates exist early) count as no events.
    found = {k: v for k, v in found.items() if v or k in expected}
    return found.keys() == expected.keys() and all(
        math.isclose(found[k], v, rel_tol=1e-9, abs_tol=1e-9) for k, v in expected.items()
    )


def test_the_dashboard_shows_the_traffic_sent(observed: Observed) -> None:
    t, w, prom = TRAFFIC, observed.window_s, observed.prom

    def one(title: str, kind: str = "timeseries", ref: str = "A") -> float:
        return prom.value(_panel(observed, title, kind, ref), observed.last)

    def counts(title: str, *labels: str, kind: str = "timeseries") -> dict[Any, float]:
        # A rate over the window, times the window: the count in it.
        return _by(observed.at_last(_panel(observed, title, kind)), *labels, scale=w)

    def recorded(title: str, *labels: str, ref: str = "A") -> dict[Any, float]:
        # Panels on the recording rules: an evaluation after the traffic, whose
        # windows (5m, 1h) reach back to the app's first scrape: the whole run.
        return _by(prom.vector(_panel(observed, title, ref=ref), observed.rules), *labels)

    # Counts over the dashboard's range are whole numbers, exactly the traffic.
    block_rate = (t.blocked + t.failed_closed) / t.total
    assert one("Block rate", "stat") == pytest.approx(block_rate, rel=1e-9)
    assert one("Decisions", "stat") == t.total
    assert one("Fail-open decisions", "stat") == t.failed_open
    outcomes = _by(
        observed.at_last(_panel(observed, "Decisions by outcome", "bargauge")), "decision"
    )
    assert outcomes == t.decisions  # every decision listed, app_error included, none fractional
    assert all(v == int(v) for v in outcomes.values())
    reloads = _panel(observed, "Policy reloads", "stat")
    assert _by(observed.at_last(reloads), "policy", "result") == {
        ("test", "success"): 0,
        ("test", "failure"): 0,
    }
    failing = _panel(observed, "Policy reloads", "stat", ref="B")
    assert _by(observed.at_last(failing), "policy") == {"test": 0}

    # Panels on the recording rules: shares of everything sent since the start.
    assert recorded("Block rate", "policy") == pytest.approx({"test": SENT_BLOCK_RATE})
    rates = recorded("Decisions over time", "decision")
    everything = sum(rates.values())
    shares = {d: r / everything for d, r in rates.items()}
    assert shares == pytest.approx({d: n / sum(SENT.values()) for d, n in SENT.items()})
    fail_open = recorded("Fail-open decisions", "policy")["test"]
    assert fail_open / everything == pytest.approx(SENT["error_allowed"] / sum(SENT.values()))
    # The LLM screen answered the allowed and the failed-open requests; it was
    # cut off on the flagged ones. Every call counted from the first, so the
    # ratio is exact (it read over 1 when its denominator started late).
    answered = SENT["allowed"] + SENT["error_allowed"]
    assert recorded("Judge error rate", "judge", "stage") == pytest.approx(
        {
            ("screen", "input"): SENT["error_allowed"] / answered,
            ("injection", "input"): 0,
            ("pii", "input"): 0,
        }
    )
    escalated = WARM_UP.escalated + t.escalated
    overturned = WARM_UP.overturned + t.overturned
    assert recorded("Overturn rate and agreement", "policy") == pytest.approx(
        {"test": overturned / escalated}
    )
    assert recorded("Overturn rate and agreement", "policy", ref="B") == pytest.approx(
        {"test": SENT["blocked"] / escalated}
    )
    latency = recorded("Judge latency p95", "judge", "stage")
    assert set(latency) == {
        ("screen", "input"),
        ("injection", "input"),
        ("pii", "input"),
        ("a", "panel"),
        ("b", "panel"),
    }
    # Local judges answer in microseconds: the buckets resolve them (the p95 is no
    # longer an artifact of a 0.5 ms smallest bucket). Checked on the buckets, not
    # on a measured duration, which a loaded machine may stretch.
    assert 0 < latency[("pii", "input")] < 30
    assert min(_LATENCY_BUCKETS) <= 0.00001
    quantiles = [recorded("Added latency p50 / p95 / p99", "policy", ref=r)["test"] for r in "ABC"]
    assert 0 <= quantiles[0] <= quantiles[1] <= quantiles[2]
    assert 0 <= recorded("Answers within 50 ms", "policy")["test"] <= 1

    assert _close(
        counts("Flags by judge and category", "judge", "category"),
        {
            ("injection", "prompt_injection"): t.blocked,
            ("pii", "pii_card"): t.overturned + t.failed_closed,
        },
    )
    assert _close(counts("Rejected unscreened, by reason", "reason"), {"invalid_json": 1})
    errors = counts("Judge errors by reason", "judge", "stage", "reason")
    assert {k: v for k, v in errors.items() if v} == pytest.approx(
        {("screen", "input", "http"): t.failed_open}
    )

    assert _close(counts("Panel escalations", "stage", "trigger"), {("input", "flag"): t.escalated})
    # Seats a and b settle every vote (or both fail); c, slow, is cut off every time.
    votes = counts("Panel votes", "judge", "vote")
    assert _close(
        votes,
        {
            ("a", "block"): t.blocked,
            ("a", "allow"): t.overturned,
            ("a", "abstain"): t.failed_closed,
            ("b", "block"): t.blocked,
            ("b", "allow"): t.overturned,
            ("b", "abstain"): t.failed_closed,
            ("c", "abstain"): t.escalated,
        },
    )
    abstentions = counts("Panel abstentions by reason", "judge", "reason")
    assert _close(
        abstentions,
        {
            ("a", "parse"): t.failed_closed,
            ("b", "parse"): t.failed_closed,
            ("c", "cancelled"): t.escalated,
        },
    )
    # The two panels agree: every abstain vote has its reason.
    for judge in ("a", "b", "c"):
        said = sum(v for (j, _), v in abstentions.items() if j == judge)
        assert said == pytest.approx(votes.get((judge, "abstain"), 0.0)), judge
    assert _close(counts("Panel stragglers cancelled", "judge"), {"c": t.escalated})
    ended = set(_by(observed.at_last(_panel(observed, "Panel time p95")), "ended"))
    assert ended == {"quorum", "no_quorum"}
    assert _close(
        counts("Cancelled generations", "reason"),
        {"blocked": t.blocked + t.failed_closed, "client_disconnected": 0},
    )
    versions = _by(observed.at_last(_panel(observed, "Active policy version", "stat")), "policy")
    assert versions == {"test": 1}
    assert one("Requests in flight", "stat") == 0
    assert _by(observed.at_last(_panel(observed, "Requests in flight")), "policy") == {"test": 0}

    p99 = one("Added latency p99", "stat")
    assert 0 <= p99 <= max(quantiles[2], 5.0)
    assert 0 <= one("Answers within 50 ms", "stat") <= 1
    released = t.allowed + t.overturned + t.failed_open
    held = "guardrail_added_latency_seconds_count"
    count = f'sum(increase({held}{{policy="test"}}[{observed.window}]))'
    assert prom.value(count, observed.last) == pytest.approx(released)


def test_an_idle_policy_reads_zero_not_nan(observed: Observed) -> None:
    """Before any traffic, ratios read 0 (the dashboard's and the rules' alike)."""
    window = f"{round((observed.idle - observed.first) * 1000)}ms"

    def at_idle(title: str, kind: str = "timeseries", ref: str = "A") -> float:
        for panel in _panels(_dashboard()):
            if (panel["title"], panel["type"]) == (title, kind):
                expr = next(t["expr"] for t in panel["targets"] if t["refId"] == ref)
                return observed.prom.value(observed.substitute(expr, window), observed.idle)
        raise LookupError(title)

    assert at_idle("Block rate", "stat") == 0
    assert at_idle("Decisions", "stat") == 0
    assert at_idle("Answers within 50 ms", "stat") == 0
    prom, at = observed.prom, observed.idle_rules
    for record in (
        "guardrail:block_rate:ratio_rate5m",
        "guardrail:panel_overturn_rate:ratio_rate1h",
        "guardrail:added_latency_slo_errors:ratio_rate5m",
    ):
        assert prom.value(f'{record}{{policy="test"}}', at) == 0, record
    errors = prom.vector('guardrail:judge_error_rate:ratio_rate5m{policy="test"}', at)
    assert _by(errors, "judge", "stage") == {
        ("screen", "input"): 0,
        ("injection", "input"): 0,
        ("pii", "input"): 0,
    }


def test_every_series_exists_from_the_first_scrape(observed: Observed) -> None:
    """Numerators and denominators alike, at zero, before the first request."""
    prom, at = observed.prom, observed.first

    def labels(expr: str, *names: str) -> set[Any]:
        return set(_by(prom.vector(expr, at), *names))

    screens = {("screen", "input"), ("injection", "input"), ("pii", "input")}
    assert labels('guardrail_judge_calls_total{policy="test"} == 0', "judge", "stage") == screens
    errors = 'sum by (judge, stage) (guardrail_judge_errors_total{policy="test"}) == 0'
    assert labels(errors, "judge", "stage") == screens
    votes = 'guardrail_panel_votes_total{policy="test"} == 0'
    assert labels(votes, "judge", "vote") == {
        (j, v) for j in "abc" for v in ("block", "allow", "abstain")
    }
    cancelled = 'guardrail_panel_abstentions_total{policy="test", reason="cancelled"} == 0'
    assert labels(cancelled, "judge") == {"a", "b", "c"}
    decisions = 'guardrail_requests_total{policy="test"} == 0'
    assert labels(decisions, "decision") == set(TRAFFIC.decisions)
    assert prom.value('guardrail_policy_reload_failing{policy="test"}', at) == 0


def test_raw_counters_add_up(observed: Observed) -> None:
    """The plain counters, since the app started: warm-up and traffic."""
    prom, last = observed.prom, observed.last
    block_rate = (
        'sum(guardrail_requests_total{policy="test", decision=~"blocked|error_blocked"})'
        ' / sum(guardrail_requests_total{policy="test"})'
    )
    assert prom.value(block_rate, last) == pytest.approx(SENT_BLOCK_RATE)
    decisions = 'sum by (decision) (guardrail_requests_total{policy="test"})'
    assert _by(prom.vector(decisions, last), "decision") == SENT
    fail_open = 'sum(guardrail_requests_total{policy="test", decision="error_allowed"})'
    assert prom.value(fail_open, last) == SENT["error_allowed"]
    judge_errors = 'sum by (judge, stage, reason) (guardrail_judge_errors_total{policy="test"}) > 0'
    assert _by(prom.vector(judge_errors, last), "judge", "stage", "reason") == {
        ("screen", "input", "http"): SENT["error_allowed"]
    }


def test_every_rule_expression_evaluates(observed: Observed) -> None:
    wrong, firing = [], {}
    for rule in _rules():
        found = observed.at_last(rule["expr"])
        if "alert" in rule:
            if found:
                firing[rule["alert"]] = _by(found, "policy")
        elif not found or not all(math.isfinite(v) for v in found.values()):
            wrong.append(f"{rule['record']}: {found}")
    assert not wrong, "\n".join(wrong)
    # Only fail-open fires: the other alerts need hours of baseline, or counts
    # a dozen requests do not reach.
    assert firing == {"GuardrailFailOpen": {"test": SENT["error_allowed"]}}

    # Every window reaches back past the first scrape, where every decision's
    # series was at zero: rates over them are exact.
    recorded = {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}
    rate5m = observed.at_last(recorded["guardrail:requests:rate5m"])
    assert _close(_by(rate5m, "decision", scale=300), SENT)
    for window in ("5m", "1h", "1d"):
        expr = recorded[f"guardrail:block_rate:ratio_rate{window}"]
        assert observed.prom.value(expr, observed.last) == pytest.approx(SENT_BLOCK_RATE)


def test_prometheus_runs_the_rules(observed: Observed) -> None:
    prom = observed.prom
    groups = prom.api("rules")["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert len(loaded) == len(_rules())
    assert [r for r in loaded if r["health"] != "ok" or r.get("lastError")] == []

    # A recording of a later evaluation than the last scrape: the whole traffic.
    recorded = 'guardrail:block_rate:ratio_rate5m{policy="test"}'
    assert prom.wait_until(lambda: prom.value(f"timestamp({recorded})") > observed.last)
    assert prom.value(recorded) == pytest.approx(SENT_BLOCK_RATE)

    alerts = prom.api("alerts")["alerts"]
    assert [(a["labels"]["alertname"], a["labels"]["policy"], a["state"]) for a in alerts] == [
        ("GuardrailFailOpen", "test", "firing")
    ]


def test_the_audit_trail_holds_one_record_per_request_prometheus_counted(
    observed: Observed,
) -> None:
    counted = _by(observed.at_last('guardrail_requests_total{policy="test"}'), "decision")
    total = sum(counted.values())

    def records() -> list[dict[str, Any]]:
        lines = observed.audit.read_text().splitlines() if observed.audit.exists() else []
        return [json.loads(line) for line in lines]

    # The trail's writer thread lands a record a moment after its request ends.
    deadline = time.monotonic() + 5
    while len(records()) < total and time.monotonic() < deadline:
        time.sleep(0.02)
    found = records()
    assert len(found) == total > 0
    by_decision: dict[str, int] = {}
    for record in found:
        by_decision[record["decision"]] = by_decision.get(record["decision"], 0) + 1
    assert by_decision == {d: n for d, n in counted.items() if n}
    assert len({r["request_id"] for r in found}) == total
    assert not any(INJECTION in json.dumps(r) or CARD in json.dumps(r) for r in found)


def test_the_dashboard_draws_from_prometheus(observed: Observed, tmp_path: Path) -> None:
    """examples/observability/render_dashboard.py: every panel it draws has data."""
    pytest.importorskip("matplotlib", reason="pip install -e '.[observability]'")
    from examples.observability.render_dashboard import render

    out = tmp_path / "dashboard.png"
    drawn = render(observed.prom.url, out, start=observed.first, end=observed.rules, policy="test")
    empty = [name for name, count in drawn.series.items() if not count]
    assert not empty, f"panels with no data: {empty}"
    assert len(drawn.series) == 11
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@settings(max_examples=30)  # each example opens an HTTP client (no request is sent)
@given(
    st.floats(1e9, 2e9, allow_nan=False),
    st.floats(0.001, 86_400, allow_nan=False),
)
def test_the_rendered_series_end_on_the_last_moment_asked(end: float, range_s: float) -> None:
    """A rate drawn over the range sees the last scrape: the query's last point is ``end``."""
    pytest.importorskip("matplotlib", reason="pip install -e '.[observability]'")
    from examples.observability.render_dashboard import Source

    source = Source("http://127.0.0.1:9", end - range_s, end, ".*")
    points = (source.end - source.start) / source.step_s
    assert math.isclose(points, round(points), abs_tol=1e-6)
    assert source.start <= end - range_s + 0.5  # the whole range asked for, rounded


RELOADABLE = """\
name: test
routes: [{path: /v1/chat/completions}]
judges: {injection: {type: injection}}
input: {screens: [{judge: injection}]}
metrics: {path: /metrics}
"""


def test_the_reload_alert_fires_while_the_file_stays_broken(tmp_path: Path) -> None:
    """Broken file: the alert fires and keeps firing; fixed: it resolves."""
    binary = require_binary("prometheus")
    path = tmp_path / "policy.yaml"
    path.write_text(RELOADABLE)
    app = GuardrailMiddleware(
        create_app(None), policy=path, registry=CollectorRegistry(), watch_interval_s=0.05
    )
    firing = 'ALERTS{alertname="GuardrailPolicyReloadFailed", alertstate="firing", policy="test"}'
    with (
        Served(app) as served,
        Prometheus(
            binary,
            tmp_path,
            targets=[served.url.removeprefix("http://")],
            rule_files=[RULES],
        ) as prom,
    ):
        _evaluated_after(prom, _scrape_after(prom, 0.0))
        assert prom.vector(firing) == {}
        path.write_text("name: test\nroutes: [garbage")
        assert prom.wait_until(lambda: bool(prom.vector(firing)), timeout=60), prom.log_tail()
        # Still broken: later evaluations still fire (no window for it to slide out of).
        still = _evaluated_after(prom, _scrape_after(prom, time.time()))
        assert _by(prom.vector(firing, still), "policy") == {"test": 1}
        path.write_text(RELOADABLE.replace("injection}]}", "injection, timeout_s: 1}]}"))
        assert prom.wait_until(lambda: not prom.vector(firing), timeout=60), prom.log_tail()
        reloads = 'guardrail_policy_reloads_total{policy="test"}'
        assert _by(prom.vector(reloads), "result") == {"success": 1, "failure": 1}
