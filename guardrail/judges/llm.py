"""A judge that asks a chat model whether a text falls into the policy's categories.

Two clients, chosen per judge:

- the lean path: one hand-built POST over a shared ``aiohttp`` session, for
  endpoints that speak the OpenAI chat protocol. The screen runs on every
  request, and this client costs a fraction of the SDKs' CPU per call;
- the LiteLLM path: ``litellm.acompletion`` for any other provider. Importing
  LiteLLM takes seconds, so ``load_litellm`` is called while the guard is built
  (off the event loop), only for a policy that needs it.

Both map every failure to ``JudgeError``: ``timeout``, ``rate_limited`` (with
the server's Retry-After), ``http``, or ``parse``. Cancellation is never
swallowed, and cancelling ``screen`` closes its HTTP request.

The lean path's pool holds at most ``max_connections`` connections (a policy
field); a call that finds them all busy queues, and reports how long through
the runner's ``ConnectionWait``, so a saturated pool is not mistaken for a slow
vendor.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp

from guardrail.judges.base import (
    ConnectionWait,
    JudgeError,
    Verdict,
    connection_wait,
    judge_usage,
)
from guardrail.judges.prompt import VERDICT_SCHEMA, build_messages, parse_verdict

ClientChoice = Literal["auto", "openai", "litellm"]

_OPENAI_PREFIX = "openai/"
_DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
# Bounded so a burst cannot open unbounded sockets to one vendor, yet sized
# for one: a thousand requests held at once each need their own call.
DEFAULT_MAX_CONNECTIONS = 1000


class LLMJudge:
    """Screens text with one chat model and returns its verdict."""

    inline = False

    def __init__(
        self,
        *,
        name: str,
        model: str,
        categories: Sequence[str],
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        temperature: float = 0.0,
        max_tokens: int = 200,
        json_schema: bool = True,
        client: ClientChoice = "auto",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._name = name
        self._model = model
        self._categories = tuple(categories)
        self._api_base = api_base
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._json_schema = json_schema
        self._lean = client == "openai" or (
            client == "auto" and (api_base is not None or model.startswith(_OPENAI_PREFIX))
        )
        self._connections = _Connections(max_connections)

    @property
    def name(self) -> str:
        """The judge's name from the policy; a metric label."""
        return self._name

    @property
    def client(self) -> Literal["openai", "litellm"]:
        """Which client this judge resolved to."""
        return "openai" if self._lean else "litellm"

    def asking(self, categories: Sequence[str]) -> LLMJudge:
        """This judge, asked about ``categories`` only; it shares its connections."""
        return self.variant(categories=categories)

    def variant(
        self, *, categories: Sequence[str] | None = None, temperature: float | None = None
    ) -> LLMJudge:
        """This judge with other categories or temperature, on the same connection pool."""
        twin = copy.copy(self)
        if categories is not None:
            twin._categories = tuple(categories)
        if temperature is not None:
            twin._temperature = temperature
        return twin

    async def screen(self, text: str) -> Verdict:
        """Ask the model about ``text``; raise ``JudgeError`` if it gives no verdict."""
        messages = build_messages(text, self._categories)
        started = time.perf_counter()
        if self._lean:
            content = await self._complete_lean(messages)
        else:
            content = await self._complete_litellm(messages)
        return parse_verdict(
            content,
            judge=self._name,
            allowed_categories=self._categories,
            latency_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        """Close the HTTP session (shared with this judge's variants), if one was opened."""
        await self._connections.aclose()

    # --- lean path ---

    async def _complete_lean(self, messages: list[dict[str, str]]) -> str:
        session = self._connections.session()
        base = self._api_base or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_OPENAI_BASE
        url = base.rstrip("/") + "/chat/completions"
        payload = self._request_body(messages)
        payload["model"] = self._model.removeprefix(_OPENAI_PREFIX)
        headers = {"content-type": "application/json"}
        api_key = self._api_key or os.environ.get("OPENAI_API_KEY")
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        wait = connection_wait.get() or ConnectionWait()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                async with session.post(
                    url, data=json.dumps(payload).encode(), headers=headers, trace_request_ctx=wait
                ) as resp:
                    body = await resp.read()
        except TimeoutError:
            if wait.starved(time.perf_counter() - started):
                raise JudgeError("pool", _no_connection(self._timeout_s, session)) from None
            raise JudgeError("timeout", f"no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise JudgeError("http", f"{type(exc).__name__}: {exc}") from exc
        if resp.status == 429:
            raise JudgeError(
                "rate_limited", "HTTP 429", retry_after_s=retry_after_seconds(resp.headers)
            )
        if not 200 <= resp.status < 300:
            raise JudgeError("http", f"HTTP {resp.status}")
        return _content_of(body)

    # --- LiteLLM path ---

    async def _complete_litellm(self, messages: list[dict[str, str]]) -> str:
        litellm = load_litellm()  # loaded while the guard was built: a dict lookup now
        import openai  # LiteLLM's exceptions subclass the openai SDK's

        try:
            async with asyncio.timeout(self._timeout_s):
                response = await litellm.acompletion(
                    model=self._model,
                    messages=messages,
                    api_base=self._api_base,
                    api_key=self._api_key,
                    timeout=self._timeout_s,
                    max_retries=0,  # the fail mode and the panel decide what happens next
                    drop_params=True,  # a provider without JSON schema still gets the prompt
                    **self._request_body([]),
                )
        except (TimeoutError, litellm.Timeout):
            raise JudgeError("timeout", f"no answer within {self._timeout_s:g} s") from None
        except litellm.RateLimitError as exc:
            raise JudgeError(
                "rate_limited", "HTTP 429", retry_after_s=_litellm_retry_after(exc)
            ) from exc
        except openai.OpenAIError as exc:
            raise JudgeError("http", f"{type(exc).__name__}: {exc}") from exc
        if (usage := judge_usage.get()) is not None:
            usage.add(getattr(response, "usage", None))
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise JudgeError("parse", "response has no choices[0].message") from None
        if not isinstance(content, str):
            raise JudgeError("parse", "response message has no text content")
        return content

    # --- shared ---

    def _request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "temperature": self._temperature,
            "max_tokens": self._max_tokens,
        }
        if messages:
            body["messages"] = messages
        if self._json_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA},
            }
        return body


class _Connections:
    """One judge's HTTP connection pool, shared by its variants; opened on first use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, created inside the running loop on first use (it belongs to that loop)."""
        if self._session is None or self._session.closed:
            queueing = aiohttp.TraceConfig()
            queueing.on_connection_queued_start.append(_queued)
            queueing.on_connection_queued_end.append(_dequeued)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30),
                # The deadline is asyncio.timeout in _complete_lean, over the whole exchange.
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
                trace_configs=[queueing],
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _no_connection(timeout_s: float, session: aiohttp.ClientSession) -> str:
    limit = session.connector.limit if session.connector is not None else 0
    return f"no free connection within {timeout_s:g} s (pool of {limit})"


async def _queued(_: object, context: Any, __: object) -> None:
    wait: ConnectionWait = context.trace_request_ctx
    wait.begin()


async def _dequeued(_: object, context: Any, __: object) -> None:
    wait: ConnectionWait = context.trace_request_ctx
    wait.end()


@functools.cache
def load_litellm() -> Any:
    """Import LiteLLM, quietly; call it off the event loop (the import takes seconds)."""
    # Without this LiteLLM downloads its model price map at import; with no
    # network that costs seconds. Set here, not at our import, and only if unset.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # Its "Give Feedback / Get Help" banner on every provider error is printed
    # into the app's output; our errors are mapped and counted instead.
    litellm.suppress_debug_info = True
    # litellm.acompletion runs its setup in a thread, which hands back the
    # provider's coroutine. A call cancelled meanwhile (a settled panel's
    # straggler, a timeout) drops that coroutine before it ever ran: nothing
    # leaks, but Python warns "never awaited" when it is collected. Only
    # LiteLLM's provider handlers are matched.
    warnings.filterwarnings(
        "ignore",
        message=_LITELLM_UNAWAITED,
        category=RuntimeWarning,
    )
    return litellm


_LITELLM_UNAWAITED = r"coroutine '\w+\.(acompletion|_?async_completion)\w*' was never awaited"


def _content_of(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and (usage := judge_usage.get()) is not None:
            usage.add(data.get("usage"))
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError("parse", "response is not a chat completion") from None
    if not isinstance(content, str):
        raise JudgeError("parse", "response message has no text content")
    return content


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None


def _litellm_retry_after(exc: BaseException) -> float | None:
    # LiteLLM keeps the provider's headers on the exception; its own
    # ``response`` may be a synthetic one without them.
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if headers:
            # httpx.Headers is case-insensitive; a plain dict may not be.
            lowered = {str(k).lower(): str(v) for k, v in headers.items()}
            seconds = retry_after_seconds(lowered)
            if seconds is not None:
                return seconds
    return None
