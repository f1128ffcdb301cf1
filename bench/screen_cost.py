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
