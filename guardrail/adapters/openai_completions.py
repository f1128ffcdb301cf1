"""OpenAI legacy completions: ``POST /v1/completions`` requests, answers and refusals.

``prompt`` is a string or a list of strings; every other string of the body is
text too (``suffix``, unknown fields), read by the deny-list walk of
``openai_request``. A prompt of token ids (integers) is refused: the model
reads them as text we cannot decode without its tokenizer. Answers are chat's
grammar with ``choices[].text``; a refusal is a completion that stops with
``finish_reason: "content_filter"``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from guardrail.adapters.answer import AnswerParts, Progress, foreign_parts
from guardrail.adapters.base import BadRequest, ChatRequest, Reply, read_json
from guardrail.adapters.openai_chat import OpenAIChat, _answer_parts
from guardrail.adapters.openai_request import Vocabulary, read_request

COMPLETIONS = Vocabulary(
    frozenset(
        """
        model prompt suffix max_tokens temperature top_p n stream stream_options
        include_usage logprobs echo stop presence_penalty frequency_penalty best_of
        logit_bias user seed
        """.split()
    ),
    {},
    media_fields=frozenset(),  # a prompt is text: no media slot anywhere
)
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class OpenAICompletions(OpenAIChat):
    """Adapter for the legacy completions API (errors and body reading as chat completions)."""

    reads = "prompt (a string or a list of strings; token ids refused), suffix, every other string"

    def parse_request(self, body: bytes) -> ChatRequest:
        """Every string of the request a receiver may read, in order; token prompts refused."""
        data = read_json(body)
        if not isinstance(data, dict):
            raise BadRequest("not_completion", "expected a JSON object with a 'prompt'")
        prompt = data.get("prompt")
        if prompt is None:
            raise BadRequest("not_completion", "a completions request needs a 'prompt'")
        if not isinstance(prompt, str | list) or not all(isinstance(p, str) for p in prompt):
            # Token ids are text to the model, numbers to us: we cannot screen them.
            raise BadRequest(
                "token_prompt", "'prompt' must be a string or a list of strings (not token ids)"
            )
        return read_request(data, COMPLETIONS, code="not_completion")

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply:
        """A completion that stops with ``content_filter`` (streamed when asked), or an error."""
        if shape == "error":
            return self.error(BadRequest("content_filter", message, status=status))
        model = request.model or "guardrail"
        ident = f"cmpl-guardrail-{uuid.uuid4().hex}"
        if request.stream:
            return Reply(status, _refusal_stream(ident, model, message), _SSE)
        completion = {
            **_completion(ident, model, message, "content_filter"),
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        return Reply(status, json.dumps(completion).encode(), list(_JSON))

    def parts_of(self, value: Any) -> AnswerParts:
        """Every string of one chunk: each choice's ``text`` is a flow, the rest side values.

        A chunk without ``choices`` is not this API's: every field of it is a flow.
        """
        if isinstance(value, dict) and isinstance(value.get("choices"), list):
            return _answer_parts(value)
        return foreign_parts(value)

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
        progress: Progress | None = None,  # chunks are not indexed: unused
        steps: tuple[str, ...] = (),  # unused
    ) -> bytes:
        """The chunks that end a cut stream: the message, ``content_filter``, then [DONE]."""
        model = model or request.model or "guardrail"
        ident = ident or f"cmpl-guardrail-{uuid.uuid4().hex}"
        return _refusal_stream(ident, model, f"\n{message}" if newline else message)


def _completion(ident: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def _refusal_stream(ident: str, model: str, message: str) -> bytes:
    chunks = [_completion(ident, model, message, None)]
    chunks.append(_completion(ident, model, "", "content_filter"))
    events = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return events + b"data: [DONE]\n\n"
