"""``guardrail eval POLICY [POLICY] DATA``: measure one policy, or two side by side.

Exit status: 0 done; 1 a ``--fail-under``/``--fail-over`` threshold failed;
2 bad input (data file, policy, arguments) or ``rich`` missing; 3 the server
stopped answering; 130 interrupted (Ctrl-C). An early stop still reports
every item that finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrail.eval.data import DataError, count_items, read_items
from guardrail.eval.outcome import Outcome
from guardrail.eval.run import Run, Runner
from guardrail.eval.summary import GATED, gate, summarize
from guardrail.policy.errors import PolicyError
from guardrail.policy.models import Policy, load_policy

DEFAULT_CONCURRENCY = 16  # within what LLM vendors' default rate limits take
INSTALL_RICH = "guardrail eval needs rich: pip install 'guardrail[eval]' (or pip install rich)"


def add_command(commands: Any) -> None:
    """Add the ``eval`` subcommand to the ``guardrail`` parser."""
    ev = commands.add_parser(
        "eval",
        help="measure a policy on labelled data (or two, side by side)",
        description="Run labelled items (JSONL or CSV) through one policy, or two to compare.",
    )
    ev.add_argument(
        "paths", nargs="*", metavar="POLICY... DATA", help="one or two policies, then the data file"
    )
    # nargs="+": argparse hands positionals that follow an option to that option, so in
    # "eval POLICY --url URL DATA" DATA lands here; run_command moves it back.
    ev.add_argument(
        "--url", nargs="+", metavar="URL", help="evaluate through the guarded server at this URL"
    )
    ev.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help="items in flight at once (default: %(default)s)",
    )
    ev.add_argument("--rate", type=float, help="at most this many items started per second")
    ev.add_argument(
        "--retry-budget",
        type=int,
        default=None,
        help="retries of rate-limited (429) items in the whole run (default: 10%% of items)",
    )
    ev.add_argument("--json", dest="json_out", metavar="FILE", help="write the results as JSON")
    ev.add_argument("--html", dest="html_out", metavar="FILE", help="write an offline HTML report")
    ev.add_argument(
        "--fail-under",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help=f"exit 1 if METRIC is below VALUE ({', '.join(GATED)}; METRIC:category for one)",
    )
    ev.add_argument(
        "--fail-over", action="append", default=[], metavar="METRIC=VALUE", help="exit 1 if above"
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``guardrail eval`` with parsed arguments; return the exit status."""
    try:
        import rich  # noqa: F401  (the progress bar and tables)
    except ImportError:
        print(INSTALL_RICH, file=sys.stderr)
        return 2
    url, *more = args.url or [None]
    args.url = url
    try:
        *policy_paths, data = [*args.paths, *more] or [""]
        if not 1 <= len(policy_paths) <= 2:
            raise DataError("give one or two policies, then the data file")
        if url and len(policy_paths) > 1:
            raise DataError("--url measures the one policy the server runs: give one policy")
        under = _thresholds(args.fail_under)
        over = _thresholds(args.fail_over)
        policies = [load_policy(p) for p in policy_paths]
        total = count_items(data)  # every row checked before the first judge call
    except (DataError, PolicyError) as exc:
        print(f"guardrail eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("guardrail eval: interrupted while the data was checked", file=sys.stderr)
        return 130
    names = _names(policies, policy_paths)
    budget = args.retry_budget if args.retry_budget is not None else max(10, total // 10)
    from rich.console import Console

    err = Console(stderr=True)
    print(
        f"guardrail eval: {total} items from {data}; {' vs '.join(names)};"
        f" concurrency {args.concurrency}" + (f" via {args.url}" if args.url else " in-process"),
        file=sys.stderr,
        flush=True,
    )
    try:
        runs = asyncio.run(_evaluate(policies, names, data, total, args, budget, err))
    except KeyboardInterrupt:  # Ctrl-C while a guard was built, before any item ran
        print("guardrail eval: interrupted before the run started", file=sys.stderr)
        return 130
    return _report(runs, policies, args, under, over)


async def _evaluate(
    policies: list[Policy],
    names: list[str],
    data: str,
    total: int,
    args: argparse.Namespace,
    budget: int,
    console: Any,
) -> list[Run]:
    from guardrail.eval import terminal

    runs: list[Run] = []
    bar = terminal.progress(console)
    loop = asyncio.get_running_loop()
    with bar:
        for policy, name in zip(policies, names, strict=True):
            runner = Runner(
                concurrency=args.concurrency,
                rate=args.rate,
                retry_budget=budget,
                on_done=_advancing(bar, bar.add_task(name, total=total)),
            )
            target = await _target(policy, name, args.url)
            loop.add_signal_handler(signal.SIGINT, runner.stop)
            try:
                runs.append(await runner.run(target, read_items(data)))
            finally:
                loop.remove_signal_handler(signal.SIGINT)
                await target.aclose()
            if runs[-1].stopped:
                break
    return runs


def _advancing(bar: Any, task: Any) -> Callable[[Outcome], None]:
    def advance(_: Outcome) -> None:
        bar.advance(task)

    return advance


async def _target(policy: Policy, name: str, url: str | None) -> Any:
    from guardrail.eval.targets import InProcess, Served

    if url:
        return Served(url, name)
    from prometheus_client import CollectorRegistry

    from guardrail.decide.guard import Guard

    # Off the loop: a policy with a LiteLLM judge imports LiteLLM here, for seconds.
    guard = await asyncio.to_thread(Guard.build, policy, registry=CollectorRegistry())
    return InProcess(guard, name)


def _report(
    runs: list[Run],
    policies: list[Policy],
    args: argparse.Namespace,
    under: dict[str, float],
    over: dict[str, float],
) -> int:
    from rich.console import Console

    from guardrail.eval import page, terminal
    from guardrail.eval.compare import compare
    from guardrail.eval.cost import estimate

    summaries = [
        summarize(run, cost=None if args.url else estimate(policy, run.outcomes))
        for run, policy in zip(runs, policies, strict=False)
    ]
    comparison = None
    if len(runs) == 2:
        comparison = compare(runs[0].outcomes, runs[1].outcomes, (runs[0].name, runs[1].name))
    failed = [f"{s['policy']}: {reason}" for s in summaries for reason in gate(s, under, over)]
    console = Console()
    if not console.is_terminal:
        console.width = 160  # a log or a pipe: do not squeeze the tables into 80 columns
    terminal.show(console, summaries, comparison)
    if args.json_out:
        document = {
            "runs": [{k: v for k, v in s.items() if k != "latency_samples_ms"} for s in summaries],
            "comparison": comparison,
            "failed_thresholds": failed,
        }
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.html_out:
        Path(args.html_out).write_text(page.render(summaries, comparison), encoding="utf-8")
    stopped = next((r.stopped for r in runs if r.stopped), None)
    if stopped == "interrupted":
        done = ", ".join(f"{r.name} {len(r.outcomes)}" for r in runs)
        print(f"guardrail eval: interrupted; finished items reported ({done})", file=sys.stderr)
        return 130
    if stopped:
        print(f"guardrail eval: stopped early: {stopped}", file=sys.stderr)
        return 3
    for reason in failed:
        print(f"guardrail eval: FAILED {reason}", file=sys.stderr)
    return 1 if failed else 0


def _thresholds(specs: list[str]) -> dict[str, float]:
    found = {}
    for spec in specs:
        metric, sep, value = spec.partition("=")
        name = metric.strip().partition(":")[0]
        if not sep or name not in GATED:
            raise DataError(f"threshold {spec!r}: expected METRIC=VALUE, METRIC one of {GATED}")
        try:
            found[metric.strip()] = float(value)
        except ValueError:
            raise DataError(f"threshold {spec!r}: {value!r} is not a number") from None
    return found


def _names(policies: list[Policy], paths: list[str]) -> list[str]:
    names = [p.name for p in policies]
    if len(set(names)) < len(names):  # two versions of one policy: tell them apart by file
        names = [f"{n} ({Path(p).name})" for n, p in zip(names, paths, strict=True)]
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
