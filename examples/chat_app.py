"""An OpenAI-compatible chat app, guarded by guardrail in two lines.

Offline (no ``OPENAI_API_KEY``) it echoes the last user message, so the demo
runs anywhere. With a key it answers with a real model (``DEMO_MODEL``,
default gpt-4o-mini; ``OPENAI_BASE_URL`` points it at any compatible server).

    guardrail demo      # or: uvicorn --factory examples.chat_app:create_app
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from guardrail import GuardrailMiddleware, Policy


def create_app(
    policy: str | Policy | None = "default",
    *,
    upstream: AsyncOpenAI | None = None,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The example chat app; guarded by ``policy`` unless it is None."""
    if upstream is None and os.environ.get("OPENAI_API_KEY"):
        upstream = AsyncOpenAI()
    model = os.environ.get("DEMO_MODEL", "gpt-4o-mini")

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages", [])
        stream = body.get("stream") is True
        if upstream is not None:
            return await _ask_model(upstream, body.get("model") or model, messages, stream)
        return _echo(messages, stream)

    async def anthropic_messages(request: Request) -> Response:
        body = await request.json()
        return _echo_message(body.get("messages", []), body.get("stream") is True)

    async def in_house_chat(request: Request) -> Response:
        body = await request.json()
        return _echo_in_house(body.get("message"), body.get("stream") is True)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            *_openai_routes(upstream, model),
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
            Route("/chat", in_house_chat, methods=["POST"]),
            Route("/health", health),
        ]
    )
    if policy is not None:
        app.add_middleware(GuardrailMiddleware, policy=policy, registry=registry)
    return app


async def _ask_model(
    upstream: AsyncOpenAI, model: str, messages: list[Any], stream: bool
) -> Response:
    if not stream:
        completion = await upstream.chat.completions.create(model=model, messages=messages)
        return JSONResponse(completion.model_dump(mode="json", exclude_none=True))

    chunks = await upstream.chat.completions.create(model=model, messages=messages, stream=True)

    async def events() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _echo(messages: list[Any], stream: bool) -> Response:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content")
    text = content if isinstance(content, str) else json.dumps(content)
    answer = f"You said: {text}"
    ident, created = f"chatcmpl-echo-{uuid.uuid4().hex[:12]}", int(time.time())
    if not stream:
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": "echo",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )

    async def events() -> AsyncIterator[bytes]:
        for i, word in enumerate(answer.split(" ")):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            yield _chunk(ident, created, delta, None)
            await asyncio.sleep(0.01)
        yield _chunk(ident, created, {}, "stop")
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _chunk(ident: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
    event = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": "echo",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


# --- the OpenAI Responses and legacy completions APIs ------------------------------


def _openai_routes(upstream: AsyncOpenAI | None, model: str) -> list[Route]:
    """``/v1/responses`` and ``/v1/completions``: echoed offline, else asked of the model."""

    async def responses(request: Request) -> Response:
        body = await request.json()
        stream = body.get("stream") is True
        if upstream is not None:
            answer = await upstream.responses.create(**{"model": model, **body})
            if not stream:
                return JSONResponse(answer.model_dump(mode="json", exclude_none=True))

            async def relayed() -> AsyncIterator[bytes]:
                async for event in answer:
                    data = event.model_dump_json(exclude_none=True)
                    yield f"event: {event.type}\ndata: {data}\n\n".encode()

            return StreamingResponse(relayed(), media_type="text/event-stream")
        return _echo_response(_last_input(body.get("input")), stream)

    async def completions(request: Request) -> Response:
        body = await request.json()
        stream = body.get("stream") is True
        if upstream is not None:
            answer = await upstream.completions.create(**{"model": model, **body})
            if not stream:
                return JSONResponse(answer.model_dump(mode="json", exclude_none=True))

            async def relayed() -> AsyncIterator[bytes]:
                async for chunk in answer:
                    yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"

            return StreamingResponse(relayed(), media_type="text/event-stream")
        prompt = body.get("prompt")
        return _echo_completion(prompt if isinstance(prompt, str) else json.dumps(prompt), stream)

    return [
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]


def _last_input(given: Any) -> str:
    """The text of the last user input: a string, or the last user message's text parts."""
    if isinstance(given, str):
        return given
    for item in reversed(given if isinstance(given, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(
                p.get("text", "") for p in content or [] if isinstance(p, dict)
            ) or json.dumps(content)
    return json.dumps(given)


def _echo_response(said: str, stream: bool) -> Response:
    answer = f"You said: {said}"
    ident, item_id = f"resp_echo_{uuid.uuid4().hex[:12]}", f"msg_echo_{uuid.uuid4().hex[:12]}"
    part = {"type": "output_text", "text": answer, "annotations": []}
    item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant"}
    done = {**item, "content": [part]}
    if not stream:
        return JSONResponse(_response(ident, "completed", [done]))

    async def events() -> AsyncIterator[bytes]:
        sequence = iter(range(1_000_000))

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        yield event("response.created", response=_response(ident, "in_progress", []))
        started = {**item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=0, item=started)
        yield event("response.content_part.added", **where, part={**part, "text": ""})
        for i, word in enumerate(answer.split(" ")):
            yield event("response.output_text.delta", **where, delta=word if i == 0 else " " + word)
            await asyncio.sleep(0.01)
        yield event("response.output_text.done", **where, text=answer)
        yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=0, item=done)
        yield event("response.completed", response=_response(ident, "completed", [done]))

    return StreamingResponse(events(), media_type="text/event-stream")


def _response(ident: str, status: str, output: list[Any]) -> dict[str, Any]:
    # The fields an echo has; the SDK fills the others it does not get with None.
    created = int(time.time())
    return {"id": ident, "object": "response", "created_at": created, "status": status} | {
        "model": "echo",
        "output": output,
        "tools": [],
    }


def _echo_completion(said: str, stream: bool) -> Response:
    answer = f"You said: {said}"
    ident, created = f"cmpl-echo-{uuid.uuid4().hex[:12]}", int(time.time())

    def completion(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": "echo",
            "choices": [choice],
        }

    if not stream:
        return JSONResponse(completion(answer, "stop"))

    async def events() -> AsyncIterator[bytes]:
        for i, word in enumerate(answer.split(" ")):
            chunk = completion(word if i == 0 else " " + word, None)
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await asyncio.sleep(0.01)
        yield b"data: " + json.dumps(completion("", "stop")).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# --- Anthropic Messages (POST /v1/messages): an offline echo in the API's own shape ---


def _echo_message(messages: list[Any], stream: bool) -> Response:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content")
    if isinstance(content, list):  # blocks: the text of the text blocks
        content = " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    answer = f"You said: {content}"
    message: dict[str, Any] = {
        "id": f"msg_echo_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": "echo",
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": len(answer.split())},
    }
    if not stream:
        return JSONResponse(message)

    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        start = {**message, "content": [], "stop_reason": None}
        yield event("message_start", message=start)
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        yield event("ping")
        for i, word in enumerate(answer.split(" ")):
            text = word if i == 0 else " " + word
            yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
            await asyncio.sleep(0.01)
        yield event("content_block_stop", index=0)
        yield event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage=message["usage"],
        )
        yield event("message_stop")

    return StreamingResponse(events(), media_type="text/event-stream")


# --- an in-house chat API (POST /chat), guarded as generic JSON (format: json) -------
# Request: {"message": "...", "history": [{"role", "content"}], "stream": bool}.
# Answer: {"reply": "..."}; streamed as JSON lines {"delta": "..."}, then {"done": true}.


def _echo_in_house(message: Any, stream: bool) -> Response:
    answer = f"You said: {message}"
    if not stream:
        return JSONResponse({"reply": answer})

    async def lines() -> AsyncIterator[bytes]:
        for i, word in enumerate(answer.split(" ")):
            yield json.dumps({"delta": word if i == 0 else " " + word}).encode() + b"\n"
            await asyncio.sleep(0.01)
        yield b'{"done": true}\n'

    return StreamingResponse(lines(), media_type="application/x-ndjson")
