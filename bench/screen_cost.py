"""Screen time of the local judges by body size, benign and adversarial: it grows linearly.

    python bench/screen_cost.py [--repeats 3] [--quick] [--baseline e820198]

Each text is screened by the three local judges (keywords, pii, injection)
one after another, as the input stage runs them, in this process. For each
kind and size the table gives the median screen time, the time per MiB (flat
when the cost is linear), and the longest the event loop went without a turn
while screening (what another request would wait): it stays near one chunk's
work whatever the size. Each repeat screens a slightly different text, so
the normalisation cache never answers. No text holds anything to flag, so
every judge reads it to the end.

A second table screens a small text while 0, 4 or 16 benign 1 MiB texts are
being screened on the same event loop, and records the longest a task
waiting on I/O waited for its turn: one round of the big screens' chunks,
not their whole work.

Between the two, a table screens whole requests through the guard (``Guard.assess_request``,
the same three judges as input screens, default windows): a benign text, one
visible letter per KiB of zero-width spaces, and text spelled in tag
characters. Per kind: the guard's CPU, its windows, and the characters its
windows hold over the body's (what every judge reads, an LLM judge included):
near 1 when a window's context costs little, whatever the text is made of.

``--baseline REV`` also screens the same texts with the judges of commit
``REV`` (its ``guardrail/`` checked out into a temporary directory and run in
a child process, one after the other on the same machine) and adds a column:
this tree's time over that one's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import Column, Table, machine_line

ROOT = Path(__file__).resolve().parent.parent
# ``--root DIR`` imports the judges from another checkout (see ``--baseline``).
_ROOT_FLAG = sys.argv.index("--root") if "--root" in sys.argv else -1
sys.path.insert(0, sys.argv[_ROOT_FLAG + 1] if _ROOT_FLAG >= 0 else str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from guardrail import Guard, parse_policy  # noqa: E402
from guardrail.decide.pieces import key, lay_out  # noqa: E402
from guardrail.judges.local import InjectionJudge, KeywordJudge, PIIJudge  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
SIZES = {"1 KB": KIB, "16 KB": 16 * KIB, "128 KB": 128 * KIB, "1 MiB": MIB}

PROSE = (
    "The committee met on Tuesday to review the quarterly figures, and agreed "
    "that the new warehouse in the north should open before the winter. "
)
RUSSIAN = "Съешь же ещё этих мягких французских булок, да выпей чаю. "


def repeat(unit: str) -> Callable[[int], str]:
    """A text of ``size`` characters made of ``unit`` over and over."""
    return lambda size: (unit * (size // len(unit) + 1))[:size]


KINDS: dict[str, Callable[[int], str]] = {
    "benign English": repeat(PROSE),
    "benign Russian": repeat(RUSSIAN),
    "combining marks": repeat("a\u0301\u0316\u0301\u0316\u0301\u0316"),
    "mark bomb (no base)": repeat("\u0301\u0316"),
    "invisibles": repeat("i\u200bg\u3164n\u2800o "),
    "lookalikes": repeat("\u0585\u03b1\u0131 \u0456\u0430 "),
    "digit run": repeat("4111111111111111"),
    "spaced digits": repeat("4 1 1 1 - "),
    "email-like": repeat("a.b@c"),
}


async def screen_once(text: str, *, check: bool = True) -> tuple[float, float]:
    """(screen time, longest loop stall) in seconds for one text."""
    judges = [
        KeywordJudge("banned", keywords=["nerve agent", "ricin"]),
        PIIJudge("pii"),
        InjectionJudge("injection"),
    ]
    longest_gap = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal longest_gap
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest_gap = max(longest_gap, now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    for judge in judges:
        verdict = await judge.screen(text)
        assert not (check and verdict.flagged), (judge.name, verdict.reason)
    elapsed = time.perf_counter() - started
    done.set()
    await ticking
    return elapsed, longest_gap


async def small_beside_big(big_count: int) -> tuple[float, float, float]:
    """(small screen time, longest wait for a loop turn, all done) with ``big_count``
    1 MiB screens running on the loop."""
    judges = [PIIJudge("pii"), InjectionJudge("injection")]

    async def screen(text: str) -> None:
        for judge in judges:
            await judge.screen(text)

    await screen("warm up")
    longest_gap = 0.0

    async def ticker() -> None:
        # Sleeps a little, as a request waiting on its socket would: how late
        # it wakes up is how long a turn of the loop takes to come round.
        nonlocal longest_gap
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            longest_gap = max(longest_gap, time.perf_counter() - before - 0.001)

    started = time.perf_counter()
    bigs = [
        asyncio.create_task(screen(KINDS["benign English"](MIB - 2) + f" {n}"))
        for n in range(big_count)
    ]
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # every big screen has started
    small_started = time.perf_counter()
    await screen(PROSE + "small")
    small = time.perf_counter() - small_started
    await asyncio.gather(*bigs)
    ticking.cancel()
    return small, longest_gap, time.perf_counter() - started


def tags(text: str) -> str:
    """``text`` spelled in tag characters: invisible ASCII that a model reads."""
    return "".join(chr(0xE0000 + ord(char)) for char in text)


REQUEST_KINDS: dict[str, Callable[[int], str]] = {
    "benign English": repeat(PROSE),
    "x per KiB of zero-width": repeat("x" + "\u200b" * 1023),
    "text in tags": lambda size: tags(repeat(PROSE)(size)),
}
GUARD_POLICY = """
name: bench
routes: [{path: /v1/chat/completions}]
max_body_bytes: 67108864
judges:
  banned: {type: keywords, keywords: [nerve agent, ricin]}
  pii: {type: pii}
  injection: {type: injection}
input:
  screens:
    - {judge: banned, timeout_s: 600}
    - {judge: pii, timeout_s: 600}
    - {judge: injection, timeout_s: 600}
"""


async def guard_once(text: str) -> tuple[float, int, int]:
    """(guard CPU seconds, windows, characters in them) for one request of ``text``."""
    guard = Guard.build(parse_policy(GUARD_POLICY), registry=CollectorRegistry())
    message = {"role": "user", "content": text}
    body = json.dumps({"model": "m", "messages": [message]}, ensure_ascii=False).encode()
    request = guard.adapter.parse_request(body)
    started = time.process_time()
    assessment = await guard.assess_request(request)
    cpu = time.process_time() - started
    assert assessment.decision == "allowed", assessment.decision
    # The windows the guard cut (as ``Guard.assess_request`` does for a request
    # no screen has seen), to count what they hold.
    keyed = await key(request.pieces, overlap_chars=guard.overlap_chars)
    window = guard.policy.input.window_chars
    layout = await lay_out(keyed, window_chars=window, max_raw_bytes=16 * window)
    held = sum(len(cut.context) + sum(len(t) for _, t in cut.units) for cut in layout.cuts)
    await guard.aclose()
    return cpu, len(layout.cuts), held


def guard_timings(
    args: argparse.Namespace, sizes: dict[str, int]
) -> list[tuple[str, str, float, int, int]]:
    """(kind, size label, median guard CPU, windows, characters held) per request kind."""
    rows = []
    label = list(sizes)[-1]
    for kind, make in REQUEST_KINDS.items():
        texts = (make(sizes[label] - 2) + f" {n}" for n in range(args.repeats))
        runs = [asyncio.run(guard_once(text)) for text in texts]
        cpu = statistics.median(run[0] for run in runs)
        rows.append((kind, label, cpu, runs[0][1], runs[0][2]))
    return rows


# A screen slower than this is not timed at the next size up.
TOO_SLOW_S = 5.0


def timings(
    args: argparse.Namespace, sizes: dict[str, int], *, check: bool = False
) -> list[tuple[str, str, float, float]]:
    """(kind, size label, median screen time, longest stall) for each kind and size."""
    rows = []
    for kind, make in KINDS.items():
        for label, size in sizes.items():
            if rows and rows[-1][0] == kind and rows[-1][2] > TOO_SLOW_S:
                # Quadratic at this size (an old commit's mark bomb): the next
                # size would take minutes. Left out, and the table says so.
                break
            times, stalls = [], []
            for n in range(args.repeats):
                # A different last character each time, so no cache answers.
                text = make(size - 2) + f" {n % 10}"
                elapsed, stall = asyncio.run(screen_once(text, check=check))
                times.append(elapsed)
                stalls.append(stall)
            rows.append((kind, label, statistics.median(times), max(stalls)))
    return rows


def baseline_medians(args: argparse.Namespace) -> dict[str, float]:
    """The same medians, from commit ``args.baseline``'s judges in a child process."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", args.baseline, "guardrail"],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryDirectory() as checkout:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(checkout, filter="data")
        command = [sys.executable, __file__, "--json", "--root", checkout]
        command += ["--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        child = subprocess.run(command, check=True, capture_output=True, text=True)
    medians: dict[str, float] = json.loads(child.stdout)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, up to 128 KB")
    parser.add_argument("--baseline", metavar="REV", help="also time commit REV's judges")
    parser.add_argument("--root", help=argparse.SUPPRESS)  # the checkout to import from
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = dict(SIZES)
    if args.quick:
        args.repeats = 1
        del sizes["1 MiB"]
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    if args.json:  # the child of ``--baseline``: medians only, nothing checked
        medians = {f"{kind}/{label}": median for kind, label, median, _ in timings(args, sizes)}
        for kind, label, cpu, _, held in guard_timings(args, sizes):
            medians[f"guard {kind}/{label}"] = cpu
            medians[f"held {kind}/{label}"] = held
        print(json.dumps(medians))
        return
    baseline = baseline_medians(args) if args.baseline else {}

    columns = [
        Column("text", 20),
        Column("size", 7, ""),
        Column("screen ms", 10, ".1f"),
        Column("ms per MiB", 11, ".0f"),
        Column("max stall ms", 13, ".1f"),
    ]
    if baseline:
        columns.append(Column(f"{args.baseline} ms", 13, ".1f"))
        columns.append(Column("x baseline", 11, ".2f"))
    table = Table(columns)
    for kind, label, median, stall in timings(args, sizes, check=True):
        row: list[object] = [kind, label, median * 1000, median * 1000 * MIB / sizes[label]]
        row.append(stall * 1000)
        if baseline:
            before = baseline.get(f"{kind}/{label}")
            row += ["too slow", "-"] if before is None else [before * 1000, median / before]
        table.add(*row)
    table.print(f"Median of {args.repeats}; max stall is the longest over the repeats.")

    guarded = [
        Column("request", 24),
        Column("size", 7, ""),
        Column("guard CPU ms", 13, ".0f"),
        Column("windows", 8, "d"),
        Column("read / body", 12, ".2f"),
    ]
    if baseline:
        guarded.append(Column(f"{args.baseline} CPU ms", 17, ".0f"))
        guarded.append(Column(f"{args.baseline} read/body", 19, ".2f"))
    requests = Table(guarded)
    for kind, label, cpu, windows, held in guard_timings(args, sizes):
        body = sizes[label]
        line: list[object] = [kind, label, cpu * 1000, windows, held / body]
        if baseline:
            line.append(baseline[f"guard {kind}/{label}"] * 1000)
            line.append(baseline[f"held {kind}/{label}"] / body)
        requests.add(*line)
    requests.print(
        "One request through the guard (median CPU of the repeats); read / body: the "
        "characters its windows hold, context included, over the body's."
    )

    beside = Table(
        [
            Column("1 MiB screens running", 22, "d"),
            Column("small screen ms", 16, ".1f"),
            Column("longest turn wait ms", 21, ".1f"),
            Column("all done ms", 12, ".0f"),
        ]
    )
    for big_count in (0, 4) if args.quick else (0, 4, 16):
        small, gap, total = asyncio.run(small_beside_big(big_count))
        beside.add(big_count, small * 1000, gap * 1000, total * 1000)
    beside.print()
    print(
        machine_line(
            load_before, started, "Everything runs in this one process, on one event loop."
        )
    )


if __name__ == "__main__":
    main()
