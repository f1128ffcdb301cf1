"""Adapters: the text to screen out of a request body, and a refusal in the API's own shape."""

from guardrail.adapters.anthropic_messages import AnthropicMessages
from guardrail.adapters.base import Adapter, BadRequest, ChatRequest, Reply
from guardrail.adapters.openai_chat import OpenAIChat

ADAPTERS: dict[str, type[Adapter]] = {"openai_chat": OpenAIChat}
ADAPTERS["anthropic_messages"] = AnthropicMessages

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnthropicMessages",
    "BadRequest",
    "ChatRequest",
    "OpenAIChat",
    "Reply",
]
