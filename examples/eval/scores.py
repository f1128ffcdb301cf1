"""Score every shipped policy (``policies/*.yaml``) on the sample set; rewrite the README's table.

    .venv/bin/python examples/eval/scores.py     # prints the table, updates README.md

Each policy runs through ``guardrail eval`` in this process. A policy's LLM
judges are pointed at a stub OpenAI-compatible server on 127.0.0.1
(``tests/stub_llm.py``) that answers "not flagged" to everything, so no key
and no network are needed: their rows measure the local judges, with every
LLM verdict a pass (and, for ``panel``, every escalation overturned). The
cost column is what those calls would cost at the judges' real models'
prices (LiteLLM's bundled map), with tokens estimated; it varies a little
from run to run, as a local flag cancels LLM calls still in flight.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "eval" / "sample.jsonl"
README = ROOT / "README.md"
START, END = "<!-- eval-scores:start -->", "<!-- eval-scores:end -->"


def stubbed(policy: Path, stub_url: str, folder: Path) -> Path:
    """The policy with each LLM judge asking the stub (the same model name, for prices)."""
    data = yaml.safe_load(policy.read_text(encoding="utf-8"))
    for spec in data.get("judges", {}).values():
        if spec.get("type") == "llm":
            spec["api_base"] = stub_url
            spec.pop("api_key_env", None)
    out = folder / policy.name
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def score(policy: Path, folder: Path) -> dict[str, Any]:
    from guardrail.cli.main import main

    out = folder / f"{policy.stem}.json"
    status = main(["eval", str(policy), str(SAMPLE), "--json", str(out)])
    if status != 0:
        raise SystemExit(f"guardrail eval {policy} exited {status}")
    run: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))["runs"][0]
    return run


def table(rows: list[tuple[str, bool, dict[str, Any]]]) -> str:
    lines = [
        "| policy | recall (95% CI) | false-positive rate (95% CI) | precision | errors |"
        " est. $ / 1,000 requests |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, stub, run in rows:
        o = run["overall"]
        cost = run["cost"]
        per = "-"
        if cost is not None and cost["per_1000_requests_usd"] is not None:
            per = f"{cost['per_1000_requests_usd']:.3f}"
            if cost["unpriced"]:
                per += f" (without {', '.join(cost['unpriced'])}: no price)"
        label = f"`{name}`" + (" (LLM judges stubbed: never flag)" if stub else "")
        lines.append(
            f"| {label} | {_rate(o['recall'])} | {_rate(o['fpr'])} |"
            f" {o['precision']['value']:.3f} | {o['error_rate']['hits']} | {per} |"
        )
    return "\n".join(lines)


def _rate(rate: dict[str, Any]) -> str:
    low, high = rate["ci95"]
    return f"{rate['value']:.3f} ({low:.2f}-{high:.2f})"


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from stub_llm import StubLLM

    rows = []
    with StubLLM() as stub, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for policy in sorted((ROOT / "policies").glob("*.yaml")):
            has_llm = "type: llm" in policy.read_text(encoding="utf-8")
            path = stubbed(policy, stub.base_url, folder) if has_llm else policy
            rows.append((policy.stem, has_llm, score(path, folder)))
    text = table(rows)
    print(text)
    readme = README.read_text(encoding="utf-8")
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{text}\n{END}{tail}"
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
