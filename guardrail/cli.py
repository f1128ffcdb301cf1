"""The ``guardrail`` command: ``check`` a policy file, run the guarded ``demo``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrail.factory import unset_api_keys
from guardrail.policy import Policy, load_policy
from guardrail.policy_errors import PolicyError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardrail`` console script."""
    parser = argparse.ArgumentParser(prog="guardrail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a policy file and summarise it")
    check.add_argument("policy", help="policy file (or the name of an embedded policy)")
    demo = commands.add_parser("demo", help="serve the example chat app, guarded")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--policy", default="default", help="policy file (default: embedded)")
    proxy = commands.add_parser("proxy", help="guard any HTTP chat service: forward to it")
    proxy.add_argument("--upstream", required=True, help="the service's base URL")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8000)
    proxy.add_argument("--policy", default="default", help="policy file (default: embedded)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(summary(policy := load_policy(args.policy)))
            unset_api_keys(policy)  # logged as warnings: on stderr, logging configured or not
            return 0
        if args.command == "proxy":
            return _proxy(args.upstream, args.host, args.port, args.policy)
        return _demo(args.host, args.port, args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2


def summary(policy: Policy) -> str:
    """A human summary of what a valid policy does."""
    routes = ", ".join(f"{'|'.join(r.methods)} {r.path}" for r in policy.routes)
    lines = [
        f"policy {policy.name}: valid",
        f"  guards:    {routes} ({policy.format}, body up to {policy.max_body_bytes} bytes)",
        "  screens:",
    ]
    for screen in policy.input.screens:
        spec = policy.judges[screen.judge]
        only = f", only {', '.join(screen.categories)}" if screen.categories else ""
        lines.append(f"    - {screen.judge} ({spec.type}, timeout {screen.timeout_s}s{only})")
    if policy.output is not None:
        out = policy.output
        lines.append(
            f"  answers:   {out.mode}, windows of {out.window_chars} chars"
            f" (overlap {out.overlap_chars}), screened by "
            + ", ".join(s.judge for s in out.screens)
        )
    if policy.panel is not None:
        panel = policy.panel
        seats = ", ".join(
            f"{s.judge}" + (f" x{s.samples}" if s.samples > 1 else "") for s in panel.judges
        )
        lines.append(
            f"  panel:     {seats}; {panel.quorum}, deadline {panel.deadline_s}s,"
            f" no quorum: {panel.on_no_quorum}"
        )
    lines += [
        f"  on flag:   {policy.on_flag}",
        f"  on error:  {policy.on_error} (a judge that times out or fails)",
        f"  refusal:   HTTP {policy.refusal.status}, {policy.refusal.shape}",
        f"  metrics:   {policy.metrics.path or 'not served'}",
    ]
    return "\n".join(lines)


def _demo(host: str, port: int, policy: str) -> int:
    import uvicorn

    load_policy(policy)  # fail here, with the file and line, before the server starts
    create_app = _example("chat_app").create_app
    print(f"guardrail demo: http://{host}:{port}/v1/chat/completions  metrics: /metrics")
    uvicorn.run(create_app(policy), host=host, port=port, log_level="info")
    return 0


def _proxy(upstream: str, host: str, port: int, policy: str) -> int:
    import uvicorn

    from guardrail.middleware import GuardrailMiddleware
    from guardrail.proxy import Upstream

    app = GuardrailMiddleware(Upstream(upstream), policy=policy)
    print(f"guardrail proxy: http://{host}:{port} -> {upstream}  metrics: /metrics")
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _example(name: str) -> Any:
    """Import ``examples/<name>.py`` from the working directory or the source checkout."""
    candidates = [Path.cwd() / "examples", Path(__file__).resolve().parents[1] / "examples"]
    for folder in candidates:
        path = folder / f"{name}.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"guardrail_examples.{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit(f"guardrail demo needs examples/{name}.py (run it from a source checkout)")


if __name__ == "__main__":
    raise SystemExit(main())
