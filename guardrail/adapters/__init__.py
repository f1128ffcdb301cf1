"""Adapters: the text to screen out of a request body, and a refusal in the API's own shape."""

from guardrail.adapters.base import Adapter, BadRequest, ChatRequest, Reply
from guardrail.adapters.openai_chat import OpenAIChat
from guardrail.adapters.openai_completions import OpenAICompletions
from guardrail.adapters.openai_responses import OpenAIResponses

ADAPTERS: dict[str, type[Adapter]] = {
    "openai_chat": OpenAIChat,
    "openai_responses": OpenAIResponses,
    "openai_completions": OpenAICompletions,
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "BadRequest",
    "ChatRequest",
    "OpenAIChat",
    "OpenAICompletions",
    "OpenAIResponses",
    "Reply",
]
