"""Adapters: the text to screen out of a request body, and a refusal in the API's own shape."""

from guardrail.adapters.base import Adapter, BadRequest, ChatRequest, Reply
from guardrail.adapters.openai_chat import OpenAIChat

ADAPTERS: dict[str, type[Adapter]] = {"openai_chat": OpenAIChat}

__all__ = ["ADAPTERS", "Adapter", "BadRequest", "ChatRequest", "OpenAIChat", "Reply"]
