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

With ``format`` other than ``json`` the judge asks a guard model (Llama Guard,
ShieldGemma, Granite Guardian) its own question and reads its own answer
(``guard_models``); several questions (one per harm or risk) go concurrently.
The lean POST (``Connections.post``) is shared with the moderation judge.

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
from collections.abc import Awaitable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar

import aiohttp

from guardrail.judges.base import (
    ConnectionWait,
    JudgeError,
    Verdict,
    connection_wait,
    judge_usage,
)
from guardrail.judges.guard_models import Answer, GuardFormat, Question, guard_format
from guardrail.judges.prompt import VERDICT_SCHEMA, build_messages, parse_verdict

ClientChoice = Literal["auto", "openai", "litellm"]
ClientName = Literal["openai", "litellm"]
# json: our own fenced question and JSON verdict; the others: a guard model's
# own prompt and answer (see guard_models).
AnswerFormat = Literal["json", "llama_guard", "shieldgemma", "granite_guardian"]

T = TypeVar("T")

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
        format: AnswerFormat = "json",
        codes: Sequence[str] | None = None,
        threshold: float = 0.5,
        guard_max_tokens: int | None = None,
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
        self._lean = resolved_client(client, model, api_base) == "openai"
        self._connections = Connections(max_connections)
        self._guard: GuardFormat | None = (
            None
            if format == "json"
            else guard_format(format, codes=codes, threshold=threshold, max_tokens=guard_max_tokens)
        )

    @property
    def name(self) -> str:
        """The judge's name from the policy; a metric label."""
        return self._name

    @property
    def client(self) -> ClientName:
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
        if self._guard is not None:
            return await self._screen_guarded(self._guard, text)
        messages = build_messages(text, self._categories)
        started = time.perf_counter()
        if self._lean:
            content = _content_of(await self._complete_lean(self._request_body(messages)))
        else:
            content = _content_of(await self._complete_litellm(messages, self._request_body([])))
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

    async def _complete_lean(self, payload: dict[str, Any]) -> dict[str, Any]:
        payload["model"] = self._model.removeprefix(_OPENAI_PREFIX)
        body = await self._connections.post(
            openai_url(self._api_base, "/chat/completions"),
            payload,
            headers=auth_headers(self._api_key),
            timeout_s=self._timeout_s,
        )
        return _choice_of(body)

    # --- LiteLLM path ---

    async def _complete_litellm(
        self, messages: list[dict[str, str]], options: dict[str, Any]
    ) -> dict[str, Any]:
        litellm = load_litellm()  # loaded while the guard was built: a dict lookup now
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
                    **options,
                )
        except Exception as exc:
            mapped = litellm_error(exc, litellm, self._timeout_s)
            if mapped is exc:
                raise
            raise mapped from exc
        if (usage := judge_usage.get()) is not None:
            usage.add(getattr(response, "usage", None))
        try:
            choice = response.choices[0]
            content = choice.message.content
        except (AttributeError, IndexError, TypeError):
            raise JudgeError("parse", "response has no choices[0].message") from None
        logprobs = getattr(choice, "logprobs", None)
        if logprobs is not None and hasattr(logprobs, "model_dump"):
            logprobs = logprobs.model_dump()
        return {"message": {"content": content}, "logprobs": logprobs}

    # --- guard models ---

    async def _screen_guarded(self, guard: GuardFormat, text: str) -> Verdict:
        started = time.perf_counter()
        answers = await _all([self._ask(guard, q) for q in guard.questions(text)])
        return guard.verdict(answers, judge=self._name, latency_s=time.perf_counter() - started)

    async def _ask(self, guard: GuardFormat, question: Question) -> Answer:
        # No response_format: a guard model answers in its own words.
        options: dict[str, Any] = {"temperature": 0.0, "max_tokens": guard.max_tokens}
        options.update(question.options)
        if self._lean:
            choice = await self._complete_lean({"messages": question.messages, **options})
        else:
            extra = options.pop("chat_template_kwargs", None)
            if extra is not None:
                options["extra_body"] = {"chat_template_kwargs": extra}
            choice = await self._complete_litellm(question.messages, options)
        return Answer(question.code, _content_of(choice), _first_token_logprobs(choice))

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


def resolved_client(client: ClientChoice, model: str, api_base: str | None) -> ClientName:
    """The client a judge uses: ``auto`` is the lean one for OpenAI-protocol endpoints."""
    lean = client == "openai" or (
        client == "auto" and (api_base is not None or model.startswith(_OPENAI_PREFIX))
    )
    return "openai" if lean else "litellm"


def openai_url(api_base: str | None, path: str) -> str:
    """The URL of ``path`` under the endpoint's base (``OPENAI_BASE_URL``, else OpenAI's)."""
    base = api_base or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_OPENAI_BASE
    return base.rstrip("/") + path


def auth_headers(api_key: str | None) -> dict[str, str]:
    """JSON and bearer-token headers (``OPENAI_API_KEY`` when no key is given)."""
    headers = {"content-type": "application/json"}
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class Connections:
    """One judge's HTTP connection pool, shared by its variants; opened on first use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, url: str, payload: dict[str, Any], *, headers: dict[str, str], timeout_s: float
    ) -> bytes:
        """POST ``payload`` as JSON; the 2xx body, or ``JudgeError`` (timeout, pool, 429, http)."""
        session = self.session()
        wait = connection_wait.get() or ConnectionWait()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with session.post(
                    url, data=json.dumps(payload).encode(), headers=headers, trace_request_ctx=wait
                ) as resp:
                    body = await resp.read()
        except TimeoutError:
            if wait.starved(time.perf_counter() - started):
                raise JudgeError("pool", _no_connection(timeout_s, session)) from None
            raise JudgeError("timeout", f"no answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise JudgeError("http", f"{type(exc).__name__}: {exc}") from exc
        if resp.status == 429:
            raise JudgeError(
                "rate_limited", "HTTP 429", retry_after_s=retry_after_seconds(resp.headers)
            )
        if not 200 <= resp.status < 300:
            raise JudgeError("http", f"HTTP {resp.status}")
        return body

    def session(self) -> aiohttp.ClientSession:
        """The session, created inside the running loop on first use (it belongs to that loop)."""
        if self._session is None or self._session.closed:
            queueing = aiohttp.TraceConfig()
            queueing.on_connection_queued_start.append(_queued)
            queueing.on_connection_queued_end.append(_dequeued)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30),
                # The deadline is asyncio.timeout in post, over the whole exchange.
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


def _choice_of(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and (usage := judge_usage.get()) is not None:
            usage.add(data.get("usage"))
        choice = data["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError("parse", "response is not a chat completion") from None
    if not isinstance(choice, dict):
        raise JudgeError("parse", "response is not a chat completion")
    return choice


def _content_of(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise JudgeError("parse", "response message has no text content")
    return content


def _first_token_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    """The first answer token and its alternatives, token -> logprob (None: none sent)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return None
    first = content[0]
    found: dict[str, float] = {}
    for entry in [first, *(first.get("top_logprobs") or [])]:
        if not isinstance(entry, dict):
            continue
        token, logprob = entry.get("token"), entry.get("logprob")
        if (
            isinstance(token, str)
            and isinstance(logprob, int | float)
            and not isinstance(logprob, bool)
        ):
            found.setdefault(token, float(logprob))
    return found or None


async def _all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await every call concurrently; the first failure cancels the others and is raised."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def litellm_error(exc: BaseException, litellm: Any, timeout_s: float) -> BaseException:
    """LiteLLM's exception as the ``JudgeError`` it means; anything else unchanged."""
    import openai  # LiteLLM's exceptions subclass the openai SDK's

    if isinstance(exc, TimeoutError | litellm.Timeout):
        return JudgeError("timeout", f"no answer within {timeout_s:g} s")
    if isinstance(exc, litellm.RateLimitError):
        return JudgeError("rate_limited", "HTTP 429", retry_after_s=_litellm_retry_after(exc))
    if isinstance(exc, openai.OpenAIError):
        return JudgeError("http", f"{type(exc).__name__}: {exc}")
    return exc


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
