"""The ``guardrail`` command: ``check`` a policy file, run the guarded ``demo``, ``proxy``."""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import logging.config
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrail.decide.factory import unset_api_keys
from guardrail.eval.command import add_command as add_eval_command
from guardrail.eval.command import run_command as run_eval
from guardrail.policy.errors import PolicyError
from guardrail.policy.models import Policy, load_policy

DESCRIPTION = (
    "guardrail screens chat requests in parallel with the app and refuses unsafe ones."
    " 'check' validates a policy file, 'demo' serves the example chat app guarded,"
    " 'proxy' guards any HTTP chat service by forwarding to it."
)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# ``guardrail proxy --workers N`` builds the app in each worker from these.
UPSTREAM_ENV = "GUARDRAIL_PROXY_UPSTREAM"
POLICY_ENV = "GUARDRAIL_PROXY_POLICY"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardrail`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            print(summary(policy := load_policy(args.policy)))
            unset_api_keys(policy)  # logged as warnings: on stderr, logging configured or not
            return 0
        if args.command == "eval":  # guardrail eval: measure a policy on labelled data
            return run_eval(args)
        if args.command == "proxy":
            return _proxy(
                args.upstream, args.host, args.port, args.policy, args.workers, args.log_level
            )
        return _demo(args.host, args.port, args.policy, args.log_level)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardrail", description=DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version('guardrail')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a policy file and summarise it")
    check.add_argument("policy", help="policy file (or the name of an embedded policy)")
    demo = commands.add_parser("demo", help="serve the example chat app, guarded")
    proxy = commands.add_parser("proxy", help="guard any HTTP chat service: forward to it")
    proxy.add_argument("--upstream", required=True, help="the service's base URL")
    for command in (demo, proxy):
        command.add_argument(
            "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
        )
        command.add_argument(
            "--port", type=int, default=8000, help="port, 0 for a free one (default: %(default)s)"
        )
        command.add_argument(
            "--policy",
            default="default",
            help="policy file, or the name of an embedded policy (default: %(default)s)",
        )
        command.add_argument(
            "--log-level",
            default="info",
            choices=LOG_LEVELS,
            help="of the server and of guardrail: decisions (audit records), reloads,"
            " warnings (default: %(default)s)",
        )
    proxy.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes; with several, /metrics sums them through"
        " PROMETHEUS_MULTIPROC_DIR, a temporary directory if unset (default: %(default)s)",
    )
    add_eval_command(commands)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus the ``guardrail`` logger on stderr at ``level``.

    Audit records (the ``guardrail.observe.audit`` logger, INFO), reloads and warnings
    would otherwise go nowhere: uvicorn configures only its own loggers.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["guardrail"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
        "use_colors": None,
    }
    config["handlers"]["guardrail"] = {
        "formatter": "guardrail",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["guardrail"] = {
        "handlers": ["guardrail"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


_STARTS = {
    "parallel": "with the screens (parallel: it receives requests that are then refused)",
    "after_verdict": "after the input verdict (after_verdict: refused requests never reach it)",
}


def summary(policy: Policy) -> str:
    """A human summary of what a valid policy does."""
    lines = [
        f"policy {policy.name}: valid",
        f"  guards:    {len(policy.routes)} route(s), body up to {policy.max_body_bytes} bytes",
    ]
    for route in policy.routes:
        name = policy.format_of(route)
        lines.append(f"    - {'|'.join(route.methods)} {route.path} ({name}): {_reads(name)}")
    lines.append("  screens:")
    for screen in policy.input.screens:
        spec = policy.judges[screen.judge]
        only = f", only {', '.join(screen.categories)}" if screen.categories else ""
        lines.append(f"    - {screen.judge} ({spec.type}, timeout {screen.timeout_s}s{only})")
    lines.append("  judges:")
    lines += [f"    - {name}: {judge_summary(spec)}" for name, spec in policy.judges.items()]
    lines.append(f"  app:       started {_STARTS[policy.input.start_app]}")
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


def _reads(format_name: str) -> str:
    """What an API's adapter screens of a request, as it describes itself."""
    from guardrail.adapters import ADAPTERS

    adapter = ADAPTERS.get(format_name)
    return str(getattr(adapter, "reads", "every string of the body"))


_CLIENTS = {"openai": "openai (lean aiohttp client)", "litellm": "litellm"}


def judge_summary(spec: Any) -> str:
    """One judge as ``check`` shows it: its type, and the client and format it resolved to."""
    from guardrail.judges.llm import resolved_client

    if spec.type == "llm":
        client = _CLIENTS[resolved_client(spec.client, spec.model, spec.api_base)]
        codes = f", codes {','.join(spec.codes)}" if spec.codes else ""
        where = f" at {spec.api_base}" if spec.api_base else ""
        return f"llm {spec.model}{where}; client {client}; format {spec.format}{codes}"
    if spec.type == "moderation":
        from guardrail.judges.moderation import moderation_client

        client = _CLIENTS[moderation_client(spec.client, spec.model, spec.api_base)]
        where = f" at {spec.api_base}" if spec.api_base else ""
        limits = ", ".join(f"{c} >= {t:g}" for c, t in spec.thresholds.items())
        rule = f"thresholds {limits}" if limits else "the vendor's flags"
        if spec.threshold is not None:
            rule += f", others >= {spec.threshold:g}"
        return f"moderation {spec.model}{where}; client {client}; format moderation ({rule})"
    if spec.type == "python":
        return f"python {spec.judge}; in process"
    if spec.type == "classifier":
        return f"classifier {spec.model}; ONNX Runtime, in process, batched"
    if spec.type in ("keywords", "pii", "injection"):
        return f"{spec.type}; local regexes, in process"
    return str(spec.type)


def _demo(host: str, port: int, policy: str, log_level: str) -> int:
    import uvicorn

    load_policy(policy)  # fail here, with the file and line, before the server starts
    create_app = _example("chat_app").create_app
    logs = log_config(log_level)
    logging.config.dictConfig(logs)  # before the app is built: its warnings are shown too
    where = f"http://{host}:{port}" if port else f"{host}, on the free port uvicorn reports"
    routes = "  ".join(f"POST {r.path}" for r in load_policy(policy).routes)
    print(f"guardrail demo: {where}  {routes}  metrics: /metrics", flush=True)
    uvicorn.run(create_app(policy), host=host, port=port, log_level=log_level, log_config=logs)
    return 0


def _proxy(upstream: str, host: str, port: int, policy: str, workers: int, log_level: str) -> int:
    import uvicorn

    from guardrail.flow.middleware import GuardrailMiddleware
    from guardrail.flow.proxy import Upstream

    logs = log_config(log_level)
    logging.config.dictConfig(logs)
    where = f"http://{host}:{port}" if port else f"{host}, on the free port uvicorn reports"
    print(f"guardrail proxy: {where} -> {upstream}  metrics: /metrics", flush=True)
    if workers > 1:
        load_policy(policy)  # fail here, not once in every worker
        return _proxy_workers(upstream, host, port, policy, workers, log_level, logs)
    app = GuardrailMiddleware(Upstream(upstream), policy=policy)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=logs)
    return 0


def proxy_app() -> Any:
    """uvicorn factory of one proxy worker: the upstream and policy from the environment."""
    from guardrail.flow.middleware import GuardrailMiddleware
    from guardrail.flow.proxy import Upstream

    return GuardrailMiddleware(Upstream(os.environ[UPSTREAM_ENV]), policy=os.environ[POLICY_ENV])


def _proxy_workers(
    upstream: str,
    host: str,
    port: int,
    policy: str,
    workers: int,
    log_level: str,
    logs: dict[str, Any],
) -> int:
    import uvicorn

    os.environ[UPSTREAM_ENV], os.environ[POLICY_ENV] = upstream, policy
    # Each worker counts in its own memory; a shared directory lets any of
    # them answer a scrape with the sum (prometheus_client's multiprocess mode).
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="guardrail-metrics-"
        )
    print(
        f"guardrail proxy: {workers} workers, metrics summed in"
        f" PROMETHEUS_MULTIPROC_DIR={os.environ['PROMETHEUS_MULTIPROC_DIR']}",
        flush=True,
    )
    try:
        uvicorn.run(
            "guardrail.cli.main:proxy_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            log_config=logs,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _example(name: str) -> Any:
    """Import ``examples/<name>.py`` from the working directory or the source checkout."""
    candidates = [Path.cwd() / "examples", Path(__file__).resolve().parents[2] / "examples"]
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
