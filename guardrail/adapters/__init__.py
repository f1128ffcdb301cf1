"""Adapters: the text to screen out of a request body, and a refusal in the API's own shape."""

from guardrail.adapters.anthropic_messages import AnthropicMessages
from guardrail.adapters.base import Adapter, BadRequest, ChatRequest, Reply
from guardrail.adapters.generic_json import GenericJSON, JsonShape
from guardrail.adapters.openai_chat import OpenAIChat
from guardrail.adapters.openai_completions import OpenAICompletions
from guardrail.adapters.openai_responses import OpenAIResponses

ADAPTERS: dict[str, type[Adapter]] = {
    "openai_chat": OpenAIChat,
    "openai_responses": OpenAIResponses,
    "openai_completions": OpenAICompletions,
    "anthropic_messages": AnthropicMessages,
    "json": GenericJSON,  # with no shape: every string screened, default templates
}


def build_adapter(format: str, json_shape: JsonShape | None = None) -> Adapter:
    """The adapter for an API format; a generic JSON app's with the policy's shape of it."""
    if format == "json":
        return GenericJSON(json_shape)
    return ADAPTERS[format]()


__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnthropicMessages",
    "BadRequest",
    "ChatRequest",
    "GenericJSON",
    "OpenAIChat",
    "OpenAICompletions",
    "OpenAIResponses",
    "Reply",
]
