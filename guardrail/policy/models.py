"""Policy files: the pydantic models of a policy and the loader that explains errors.

A policy is YAML. Every model forbids unknown keys and is frozen, so a typo is
an error at load time and a loaded policy cannot drift while requests use it.
Errors name the file, the line and the field (see ``guardrail.policy.errors``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from guardrail.judges.moderation import ModerationRules

from guardrail.adapters.generic_json import JsonShape
from guardrail.adapters.json_paths import parse_path
from guardrail.judges.categories import category_key
from guardrail.policy.errors import PolicyError, explain, read_yaml

DEFAULT_POLICY = "default"
DEFAULT_CATEGORIES = (
    "violence",
    "self_harm",
    "sexual_minors",
    "hate",
    "weapons",
    "illegal_drugs",
    "prompt_injection",
)


# Judge types whose flags a panel may overturn unless the policy says otherwise.
OVERTURNABLE_TYPES = ("llm", "injection", "classifier")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _category_keys(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    # One spelling per category (self-harm, Self Harm, self_harm): see judges.categories.
    return None if names is None else tuple(dict.fromkeys(category_key(n) for n in names))


def _compiles(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regex: {exc}") from None
    return patterns


# --- judges -----------------------------------------------------------------


class KeywordJudgeSpec(_Strict):
    """Flags whole-word keywords and regex patterns listed in the policy."""

    type: Literal["keywords"]
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    category: str = "banned"

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return _compiles(patterns)

    @model_validator(mode="after")
    def _not_empty(self) -> KeywordJudgeSpec:
        if not self.keywords and not self.patterns:
            raise ValueError("a keywords judge needs at least one keyword or pattern")
        return self


class PIIJudgeSpec(_Strict):
    """Flags personal data and secrets: emails, phone numbers, card numbers, API keys."""

    type: Literal["pii"]
    # iban and ssn are asked for by name: not in the default set.
    kinds: tuple[Literal["email", "phone", "card", "secret", "iban", "ssn"], ...] = (
        "email",
        "phone",
        "card",
        "secret",
    )


class InjectionJudgeSpec(_Strict):
    """Flags prompt-injection attempts by heuristics."""

    type: Literal["injection"]
    extra_patterns: tuple[str, ...] = ()

    @field_validator("extra_patterns")
    @classmethod
    def _compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return _compiles(patterns)


class LLMJudgeSpec(_Strict):
    """Asks a chat model (any LiteLLM model string) for a JSON verdict."""

    type: Literal["llm"]
    model: str = Field(min_length=1)
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    api_base: str | None = None
    # The key is read from this environment variable, never written in the policy.
    api_key_env: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: PositiveInt = 200
    json_schema: bool = True
    client: Literal["auto", "openai", "litellm"] = "auto"
    # Connections this judge may hold open at once (the lean client), sized for
    # bursts: every held request needs its own call. Past it calls queue; the
    # wait counts against the screen's timeout, and a call that ran out of time
    # mostly waiting fails as reason "pool", apart from a slow vendor ("timeout").
    max_connections: PositiveInt = 1000
    # How the model is asked and its answer read: json, our own question; or a
    # guard model's own prompt and grammar (see guardrail.judges.guard_models).
    format: Literal["json", "llama_guard", "shieldgemma", "granite_guardian"] = "json"
    # A guard model's codes that count (Llama Guard S1..S14, ShieldGemma's harms,
    # Granite Guardian's risks); left out: the format's defaults.
    codes: tuple[str, ...] | None = None
    # ShieldGemma and Granite Guardian, when the server sends logprobs: P(Yes) that flags.
    threshold: float = Field(default=0.5, gt=0.0, le=1.0)

    @field_validator("categories")
    @classmethod
    def _one_spelling(cls, categories: tuple[str, ...]) -> tuple[str, ...]:
        keys = _category_keys(categories)
        if not keys:
            raise ValueError("list at least one category to ask the judge about")
        return keys

    @model_validator(mode="after")
    def _format_fields(self) -> LLMJudgeSpec:
        from guardrail.judges.guard_models import FORMAT_CODES

        if self.format == "json":
            if self.codes is not None:
                raise ValueError("codes are for a guard model's format, not format: json")
            return self
        if "categories" in self.model_fields_set:
            raise ValueError(
                f"format: {self.format} asks the model its own question: pick what counts "
                "with codes, not categories"
            )
        known = FORMAT_CODES[self.format]
        for code in self.codes or ():
            if code not in known:
                raise ValueError(
                    f"{code!r} is not a {self.format} code; its codes: {', '.join(known)}"
                )
        if self.codes is not None and not self.codes:
            raise ValueError("list at least one code, or leave codes out")
        return self

    def guard_categories(self) -> tuple[str, ...]:
        """The categories this judge can flag: asked (json) or its counted codes' (guard)."""
        if self.format == "json":
            return self.categories
        from guardrail.judges.guard_models import categories_of

        return categories_of(self.format, self.codes)


class ModerationJudgeSpec(_Strict):
    """Asks a moderation endpoint (OpenAI's /v1/moderations or alike; others via LiteLLM)."""

    type: Literal["moderation"]
    model: str = Field(default="omni-moderation-latest", min_length=1)
    api_base: str | None = None
    api_key_env: str | None = None
    client: Literal["auto", "openai", "litellm"] = "auto"
    # Vendor category (``self-harm/intent``) -> the score that flags it; others
    # flag by the vendor's own booleans, unless ``threshold`` sets one for all.
    thresholds: dict[str, Annotated[float, Field(gt=0.0, le=1.0)]] = {}
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    ignore: tuple[str, ...] = ()  # vendor categories that never flag
    category_map: dict[str, str] = {}  # vendor category -> ours, over the built-in map
    max_connections: PositiveInt = 1000

    @model_validator(mode="after")
    def _known_vendor_categories(self) -> ModerationJudgeSpec:
        from guardrail.judges.moderation import known_vendor_categories

        known = known_vendor_categories(tuple(self.category_map))
        for field_name, names in (("thresholds", self.thresholds), ("ignore", self.ignore)):
            for name in names:
                if name not in known:
                    raise ValueError(
                        f"{field_name}: {name!r} is not a known vendor category (add it to "
                        f"category_map if your vendor has it); known: {', '.join(known)}"
                    )
        return self

    def guard_categories(self) -> tuple[str, ...]:
        """The categories this judge's flags can name."""
        return self.rules().categories()

    def rules(self) -> ModerationRules:
        """The ``ModerationRules`` this entry sets."""
        from guardrail.judges.moderation import ModerationRules

        return ModerationRules(
            thresholds=dict(self.thresholds),
            threshold=self.threshold,
            ignore=frozenset(self.ignore),
            category_map=dict(self.category_map),
        )


class PythonJudgeSpec(_Strict):
    """A judge written by the user, named by import path (``package.module:JudgeClass``)."""

    type: Literal["python"]
    judge: str = Field(min_length=1)
    settings: dict[str, Any] = {}  # keyword arguments for the class (or factory)
    # The categories its flags name; a bare True flags the first one.
    categories: tuple[str, ...] = ("other",)
    max_workers: PositiveInt = 4  # threads for a plain (not async) screen()

    @field_validator("categories")
    @classmethod
    def _one_spelling(cls, categories: tuple[str, ...]) -> tuple[str, ...]:
        keys = _category_keys(categories)
        if not keys:
            raise ValueError("list at least one category")
        return keys

    @model_validator(mode="after")
    def _importable(self) -> PythonJudgeSpec:
        # Checked at load, so a typo is an error naming the policy line, not a
        # failure on the first request.
        from guardrail.judges.user import check_target

        check_target(self.judge, self.settings)
        return self


class ClassifierJudgeSpec(_Strict):
    """Scores the text with a local text-classification model (ONNX Runtime; extra: classifier).

    ``labels`` maps the model's labels to our categories: a label left out
    (``BENIGN``) never flags. See the README's classifier section.
    """

    type: Literal["classifier"]
    # A directory with model.onnx (or onnx/model.onnx), tokenizer.json and config.json,
    # or a Hugging Face model id found in the local cache (never downloaded).
    model: str = Field(min_length=1)
    onnx_file: str | None = None  # the ONNX file inside the directory, if not the usual one
    labels: dict[str, str] = Field(min_length=1)
    threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    thresholds: dict[str, Annotated[float, Field(gt=0.0, le=1.0)]] = {}  # per model label
    # Tokens per window; a longer text is scored in windows overlapping by stride
    # tokens, and flags if any window does.
    max_length: int = Field(default=512, ge=8)
    stride: int = Field(default=64, ge=0)
    batch_size: PositiveInt = 16  # windows scored in one model run, across requests
    threads: PositiveInt = 1  # ONNX Runtime's threads within one run
    workers: PositiveInt = 1  # runs at once (each with its threads)

    @field_validator("labels")
    @classmethod
    def _one_spelling(cls, labels: dict[str, str]) -> dict[str, str]:
        return {label: category_key(category) for label, category in labels.items()}

    @model_validator(mode="after")
    def _windows_advance(self) -> ClassifierJudgeSpec:
        if self.stride >= self.max_length // 2:
            raise ValueError("stride must be less than half of max_length")
        unknown = [label for label in self.thresholds if label not in self.labels]
        if unknown:
            raise ValueError(f"thresholds names label {unknown[0]!r}, which labels does not map")
        return self

    def categories(self) -> tuple[str, ...]:
        """The categories this judge can flag."""
        return tuple(dict.fromkeys(self.labels.values()))


JudgeSpec = Annotated[
    KeywordJudgeSpec
    | PIIJudgeSpec
    | InjectionJudgeSpec
    | LLMJudgeSpec
    | ModerationJudgeSpec
    | PythonJudgeSpec
    | ClassifierJudgeSpec,
    Field(discriminator="type"),
]


# --- stages -----------------------------------------------------------------


# --- routes and their API formats ---------------------------------------------

Format = Literal[
    "openai_chat", "openai_responses", "openai_completions", "anthropic_messages", "json"
]
# Where each API is served by default: a route may leave out its path. Generic
# JSON has none: an in-house app's route is named in the policy.
DEFAULT_ROUTES: dict[str, str] = {
    "openai_chat": "/v1/chat/completions",
    "openai_responses": "/v1/responses",
    "openai_completions": "/v1/completions",
    "anthropic_messages": "/v1/messages",
}


# The methods a route may list. A name outside this set (``PSOT``) would guard
# nothing, silently: it is an error at load. CONNECT and TRACE carry no chat.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Route(_Strict):
    """A path (exact, or a prefix when it ends in ``*``) and the methods guarded on it.

    Paths match case-insensitively: some upstreams (ASP.NET, IIS, case-insensitive
    routers) route ``/V1/Chat/Completions`` like ``/v1/chat/completions``, and
    screening a request that did not need it only costs its screen.
    """

    path: str
    methods: tuple[str, ...] = ("POST",)
    format: Format | None = None  # the API spoken on this route; None: the policy's format

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("a route path starts with '/'")
        return path

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        if not methods:
            raise ValueError("list at least one HTTP method")
        upper = tuple(m.upper() for m in methods)
        unknown = [m for m in methods if m.upper() not in HTTP_METHODS]
        if unknown:
            known = ", ".join(sorted(HTTP_METHODS))
            raise ValueError(f"unknown HTTP method {unknown[0]!r} (known: {known})")
        return upper

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with this method and path is guarded by this route."""
        return method.upper() in self.methods and self.matches_path(path)

    def matches_path(self, path: str) -> bool:
        """Whether a path falls under this route, whatever the method."""
        path, mine = path.casefold(), self.path.casefold()
        if mine.endswith("*"):
            return path.startswith(mine[:-1])
        return path == mine


class Screen(_Strict):
    """One focused judge run on every guarded request."""

    judge: str
    timeout_s: PositiveFloat = 2.0
    # What the judge is asked about on this screen (a subset of what it knows):
    # None asks it everything it knows. Every flag it raises counts, whatever
    # category it names; a category not asked about is recorded as "other".
    categories: tuple[str, ...] | None = None
    # --- redaction (see guardrail.decide.redaction) ---
    # redact: an input screen of a pii or keywords judge replaces the values it
    # finds by placeholders (<EMAIL_1>) instead of refusing; None: the policy's on_flag.
    on_flag: Literal["redact"] | None = None
    # Put the original values back into the answer (never cards or secrets).
    restore: bool = False

    @field_validator("categories")
    @classmethod
    def _one_spelling(cls, categories: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if categories is not None and not categories:
            raise ValueError("list at least one category, or leave categories out")
        return _category_keys(categories)


# --- conversations: pieces, context, the verdict cache (see README "Conversations") ---


class VerdictCacheSettings(_Strict):
    """Where passed pieces are remembered, so a resent conversation is not screened again."""

    # memory: a bounded LRU in this process; redis: shared by replicas (the
    # ``redis`` extra); none: every piece is screened every time.
    backend: Literal["memory", "redis", "none"] = "memory"
    entries: PositiveInt = 100_000  # memory: keys kept, least recently used evicted first
    url: str | None = None  # redis: redis://host:port/db
    ttl_s: PositiveInt = 86_400  # redis: how long a pass is kept
    timeout_s: PositiveFloat = 0.05  # redis: slower than this is a miss

    @model_validator(mode="after")
    def _redis_has_url(self) -> VerdictCacheSettings:
        if self.backend == "redis" and not self.url:
            raise ValueError("the redis backend needs a url")
        return self


class InputStage(_Strict):
    """The screens run on the request, concurrently with the app unless told otherwise."""

    # Conversations: the request is screened as pieces (messages, content parts,
    # tool calls and results, tool definitions), cut into windows of
    # window_chars normalised characters, each with the context_chars before it.
    window_chars: PositiveInt = 4_000
    context_chars: int = Field(default=512, ge=0)
    max_concurrency: PositiveInt = 32  # network judge calls of one request at once
    # all: every piece not screened before is screened, history included (a
    # flagged history piece blocks: the app would send it to its model again).
    # latest_only: pieces before the last user message are context only.
    history: Literal["all", "latest_only"] = "all"
    cache: VerdictCacheSettings = VerdictCacheSettings()

    screens: tuple[Screen, ...] = Field(min_length=1)
    # When the app (or the proxy's forward to the upstream) is started.
    # parallel: with the screens, its answer held until the verdict: an allowed
    # request costs max(app, screen), but the app receives every request, even
    # one then refused (its call is cancelled, not undone).
    # after_verdict: only once the input verdict allows the request: a refused
    # request never reaches the app, for apps with side effects (tools, mail,
    # writes, an upstream that logs or bills prompts); allowed ones cost screen + app.
    start_app: Literal["parallel", "after_verdict"] = "parallel"


class OutputStage(_Strict):
    """The screens run on the app's answer before it reaches the client."""

    screens: tuple[Screen, ...] = Field(min_length=1)
    # hold_back: a window of a streamed answer is released only once it passed,
    # and the end of each channel's text waits for the next window (see README).
    # optimistic: released at once and screened alongside; a flag cuts the stream,
    # but the client may already have seen the flagged window.
    mode: Literal["hold_back", "optimistic"] = "hold_back"
    # Sizes count normalised characters: what the judges match, not raw bytes.
    window_chars: PositiveInt = 400
    # Each window is screened with the end of the previous one, and hold-back
    # keeps that end back until the next window passed: at least the longest
    # finding of every judge screening the answer (checked at load).
    overlap_chars: int = Field(default=64, ge=0)
    # The context an LLM judge needs to see a finding that spans two windows.
    llm_context_chars: PositiveInt = 64
    idle_timeout_s: PositiveFloat = 30.0  # the app silent this long ends the answer by on_error
    max_event_bytes: PositiveInt = 65_536  # a larger SSE event cannot be read: fail mode
    max_answer_bytes: PositiveInt = 16_777_216  # a compressed answer inflating past this: fail mode
    # A streamed body that is not server-sent events: screened per window as it
    # flows, or held and screened whole.
    plain_text: Literal["window", "whole"] = "window"
    # cut: a flagged answer is refused (a stream is cut); redact: personal data
    # the output's pii screens find is replaced by placeholders instead.
    on_flag: Literal["cut", "redact"] = "cut"


class Refusal(_Strict):
    """What a refused client gets, in the API's own shape."""

    status: int = Field(default=200, ge=200, le=599)
    message: str = "Sorry, I can't help with that request."
    # completion: a normal chat completion with finish_reason "content_filter";
    # error: an API error body (for clients that treat refusals as errors).
    shape: Literal["completion", "error"] = "completion"
    # Name the flagged message (its index in the request's messages) in the
    # refusal, so a client can drop it and go on.
    detail: bool = False


class PanelSeat(_Strict):
    """A judge on the panel: how many samples it gives and what each vote weighs."""

    judge: str
    samples: int = Field(default=1, ge=1, le=9)
    # Sampling the same model several times only helps with some randomness.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    weight: PositiveFloat = 1.0


class Panel(_Strict):
    """Judges that vote on escalated requests; the vote ends as soon as it is settled."""

    judges: tuple[PanelSeat, ...] = Field(min_length=1)
    quorum: Literal["majority", "unanimous_block", "any_block", "at_least"] = "majority"
    k: PositiveFloat | None = None  # the block weight that blocks, for at_least
    tie: Literal["block", "allow", "no_quorum"] = "block"
    min_votes: PositiveInt = 1
    deadline_s: PositiveFloat = 5.0
    # When the panel cannot reach a ruling (too many judges failed, deadline).
    on_no_quorum: Literal["block", "allow"] = "block"
    # The screens' judges whose flags the panel may overturn. The panel is asked
    # exactly what the flagging screen asked, so it judges the same question.
    # Left out: llm and injection judges (opinions a second opinion can correct);
    # a pii or keywords judge's flag is a fact and stays final unless listed here.
    overturns: tuple[str, ...] | None = None

    def may_overturn(self, judges: Mapping[str, JudgeSpec]) -> frozenset[str]:
        """The judges whose flags this panel may overturn."""
        if self.overturns is not None:
            return frozenset(self.overturns)
        return frozenset(n for n, spec in judges.items() if spec.type in OVERTURNABLE_TYPES)


class Audit(_Strict):
    """The audit trail: one JSON record per guarded request (see ``guardrail.observe.audit``)."""

    # logger: INFO on "guardrail.audit", silent until the app configures logging;
    # file: JSON lines, rotated; none: no trail.
    sink: Literal["none", "logger", "file"] = "logger"
    path: str | None = None  # the file sink's file
    max_bytes: PositiveInt = 10_485_760  # a file is rotated before it would reach this
    backups: PositiveInt = 5  # rotated files kept: path.1 (newest) .. path.N
    include_text: bool = False  # raw user text in records; off: only a salted hash
    # The hash salt is read from this environment variable; unset: random per process.
    salt_env: str | None = None
    queue_size: PositiveInt = 10_000  # records waiting for the writer; beyond: dropped, counted

    @model_validator(mode="after")
    def _file_has_path(self) -> Audit:
        if self.sink == "file" and not self.path:
            raise ValueError("the file sink needs a path")
        return self


class MetricsSettings(_Strict):
    """Where the middleware serves Prometheus metrics (None: not served)."""

    path: str | None = "/metrics"


# --- a generic JSON app (format: json) ---------------------------------------


def _paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        parse_path(path)  # its ValueError names the path and what cannot be read
    return paths


def _template(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a template must be plain JSON: {exc}") from None
    return value


JsonPaths = Annotated[tuple[str, ...], AfterValidator(_paths)]
JsonTemplate = Annotated[dict[str, Any] | list[Any], AfterValidator(_template)]


class JsonStream(_Strict):
    """How a generic JSON app streams: SSE or JSON lines, and the text fields of one event."""

    framing: Literal["sse", "ndjson"] = "sse"
    text: JsonPaths = ()  # joined across events, as the app's client joins them


class JsonApi(_Strict):
    """Where a generic JSON app carries text, by JSON path (see ``adapters.json_paths``).

    Every string and key of a request is screened, the named text fields and the
    fields not named alike, except what ``not_text`` lists.
    """

    text: JsonPaths = ()  # the request's text fields ($.message, $.history[*].content)
    not_text: JsonPaths = ()  # request fields that are not language (ids, roles)
    stream_flag: str | None = None  # the request's boolean that asks for a stream ($.stream)
    answer_text: JsonPaths = ()  # the text fields of a complete answer
    stream: JsonStream = JsonStream()
    # Templates: "{message}" (and "{code}" in errors) is replaced in every string.
    refusal: JsonTemplate = Field(default_factory=lambda: {"message": "{message}", "refused": True})
    stream_refusal: JsonTemplate | None = None  # the event that ends a refused stream
    error: JsonTemplate = Field(
        default_factory=lambda: {"error": {"message": "{message}", "code": "{code}"}}
    )

    @field_validator("stream_flag")
    @classmethod
    def _flag(cls, path: str | None) -> str | None:
        return None if path is None else _paths((path,))[0]

    @model_validator(mode="after")
    def _text_stays_text(self) -> JsonApi:
        # A not_text path over the whole body, or over a field named as text, would
        # leave the chat text unscreened: a typo must not switch the guard off.
        for path in map(parse_path, self.not_text):
            if not path.steps:
                raise ValueError("not_text cannot be '$': nothing would be screened")
            for text in map(parse_path, self.text):
                if path.covers_any(text):
                    raise ValueError(f"not_text {path.text!r} covers the text field {text.text!r}")
        return self

    def shape(self) -> JsonShape:
        """The adapter's reading of this section."""
        return JsonShape(
            text=tuple(map(parse_path, self.text)),
            not_text=tuple(map(parse_path, self.not_text)),
            stream_flag=parse_path(self.stream_flag) if self.stream_flag else None,
            answer_text=tuple(map(parse_path, self.answer_text)),
            framing=self.stream.framing,
            event_text=tuple(map(parse_path, self.stream.text)),
            refusal=self.refusal,
            stream_refusal=self.stream_refusal,
            error=self.error,
        )


# --- the policy --------------------------------------------------------------


class Policy(_Strict):
    """One policy file: what is guarded, by which judges, and what a flag does."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    # Left out: the default route of the policy's format.
    routes: tuple[Route, ...] = Field(min_length=1)
    format: Format = "openai_chat"  # the API of every route that names none
    json_api: JsonApi | None = None  # format json: where the app's JSON carries text
    max_body_bytes: PositiveInt = 1_048_576
    judges: dict[str, JudgeSpec] = Field(min_length=1)
    input: InputStage
    output: OutputStage | None = None
    # vote: escalate to the panel, which decides (on a flag, or when a judge failed).
    on_flag: Literal["block", "vote", "log_only"] = "block"
    on_error: Literal["block", "allow", "vote"] = "block"
    panel: Panel | None = None
    refusal: Refusal = Refusal()
    metrics: MetricsSettings = MetricsSettings()
    audit: Audit = Audit()

    @model_validator(mode="before")
    @classmethod
    def _default_routes(cls, data: Any) -> Any:
        # A route (or the whole list) may leave its path to its format's default.
        if not isinstance(data, Mapping):
            return data
        policy_format = data.get("format", "openai_chat")
        routes = data.get("routes")
        if routes is None and policy_format in DEFAULT_ROUTES:
            return {**data, "routes": [{"path": DEFAULT_ROUTES[policy_format]}]}
        if isinstance(routes, list | tuple):
            filled = []
            for route in routes:
                if isinstance(route, Mapping) and "path" not in route:
                    default = DEFAULT_ROUTES.get(route.get("format") or policy_format)
                    route = {**route, "path": default} if isinstance(default, str) else route
                filled.append(route)
            return {**data, "routes": filled}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        # Cross-field checks live in policy_checks; raised here with exact
        # locations so they read like every other error: file, line, field.
        from guardrail.policy.checks import problems

        errors = [
            InitErrorDetails(type=PydanticCustomError("policy", message), loc=loc, input=None)
            for loc, message in problems(self)
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def guards(self, method: str, path: str) -> bool:
        """Whether this request is screened."""
        return any(route.matches(method, path) for route in self.routes)

    def route(self, method: str, path: str) -> Route | None:
        """The route that guards this request (the first that matches), if any."""
        return next((route for route in self.routes if route.matches(method, path)), None)

    def format_of(self, route: Route | None) -> str:
        """The API spoken on a route: its own format, or else the policy's."""
        return (route.format if route is not None else None) or self.format

    def formats(self) -> tuple[str, ...]:
        """Every API format the policy's routes speak, the policy's own first."""
        return tuple(dict.fromkeys([self.format, *(self.format_of(r) for r in self.routes)]))

    def route_for(self, path: str) -> Route | None:
        """The first route whose path covers this one, whatever the method."""
        return next((route for route in self.routes if route.matches_path(path)), None)


def digest(text: str) -> str:
    """A short content hash that names a policy version in metrics and audit records."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Validate policy YAML; raise ``PolicyError`` naming file, line and field."""
    data, lines = read_yaml(text, source=source)
    if not isinstance(data, Mapping):
        raise PolicyError.single(source, 1, "", "a policy is a YAML mapping of keys to values")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source=source, data=data, lines=lines) from None


def load_policy(source: str | Path | Policy | None = None) -> Policy:
    """Load a policy from a file path, the name of an embedded policy, or pass one through."""
    if isinstance(source, Policy):
        return source
    if source is None:
        source = DEFAULT_POLICY
    path = Path(source)
    if not path.suffix and not path.exists():
        return _embedded(str(source))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError.single(str(path), 0, "", f"cannot read policy file: {exc}") from None
    return parse_policy(text, source=str(path))


def _embedded(name: str) -> Policy:
    resource = resources.files("guardrail.policy") / f"{name}.yaml"
    if not resource.is_file():
        raise PolicyError.single(name, 0, "", "no such policy file or embedded policy")
    return parse_policy(resource.read_text(encoding="utf-8"), source=f"<embedded {name}.yaml>")


def policy_data(policy: Policy) -> dict[str, Any]:
    """The policy as plain data (for summaries)."""
    return policy.model_dump(mode="json")
