"""What of an OpenAI chat request the guard screens: every string a receiver may read.

Screening is a deny-list, never an allow-list: the upstream model reads far more
than ``messages`` (tool descriptions and parameter schemas, ``response_format``,
``prediction``, file names, image URLs, fields added after this was written),
and an app may read anything. So every string value anywhere in the body is
text, and so is every object key that is not one of the API's own field names
(tool parameter names, ``metadata`` keys, unknown fields). Not screened, because
they provably are not language:

- numbers, booleans and null;
- ``model`` at the top level, when it has the shape of a model name;
- an enum field whose value is in its known set (``role: user``, ``detail: low``);
  any other value of the field is screened as text;
- binary media in the slots the API gives it, when strictly base64: ``input_audio.data``,
  and data URLs of non-text types in ``image_url`` and ``file.file_data``. No judge
  reads pixels, sound or PDF pages: they are counted (``opaque``), a known limit.
  A data URL of a text type (``text/*``, JSON, XML, SVG) is decoded and screened,
  and an image URL that is not a data URL is screened as text.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import unquote_to_bytes

from guardrail.adapters.base import (
    BadRequest,
    ChatRequest,
    Marked,
    Piece,
    field_location,
    fold_key,
    role_of,
)

# The API's own field names (chat completions, its content parts and tools) and
# JSON Schema's keywords: fixed words that carry no user text. Any other key is text.
_FIELDS = frozenset(
    """
    messages model frequency_penalty logit_bias logprobs top_logprobs max_tokens
    max_completion_tokens n presence_penalty response_format seed service_tier stop
    stream stream_options include_usage include_obfuscation temperature top_p tools
    tool_choice parallel_tool_calls user function_call functions metadata modalities
    audio voice prediction reasoning_effort store web_search_options user_location
    approximate city country region timezone search_context_size verbosity
    prompt_cache_key safety_identifier
    role content name tool_calls tool_call_id refusal id function arguments type text
    image_url url detail input_audio data format file file_data file_id filename
    custom input description parameters strict json_schema schema grammar definition
    syntax allowed_tools mode
    properties required items enum const title default additionalProperties anyOf
    allOf oneOf not $ref $defs definitions pattern minimum maximum exclusiveMinimum
    exclusiveMaximum minLength maxLength minItems maxItems uniqueItems multipleOf
    examples nullable patternProperties prefixItems propertyNames minProperties
    maxProperties $schema $id $comment if then else dependentRequired dependentSchemas
    contains contentEncoding contentMediaType unevaluatedProperties deprecated
    readOnly writeOnly
    """.split()
)

# Enum fields and their known values: a value in its set is a fixed word, not text.
_ENUMS: dict[str, frozenset[str]] = {
    key: frozenset(values.split())
    for key, values in {
        "role": "system developer user assistant tool function",
        "type": "text image_url input_audio file refusal function custom json_schema "
        "json_object content allowed_tools grammar approximate "
        "string number integer boolean object array null",  # JSON Schema types
        "detail": "auto low high",
        "reasoning_effort": "none minimal low medium high",
        "verbosity": "low medium high",
        "service_tier": "auto default flex scale priority",
        "tool_choice": "none auto required",
        "function_call": "none auto",
        "modalities": "text audio",
        "search_context_size": "low medium high",
        "syntax": "lark regex",
        "mode": "auto required",
        "format": "wav mp3 aac flac opus pcm16 text grammar "
        "date-time date time duration email hostname ipv4 ipv6 uri uuid",
    }.items()
}

# Letters, digits and the punctuation model names use ("openai/gpt-4o-mini",
# "ft:gpt-4o:org::id"): no spaces, so no sentence fits in it.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_DATA_URL = re.compile(r"data:([^,]{0,256}),", re.IGNORECASE)
# Strict base64 (line breaks allowed, as MIME writes it): anything else is not
# a payload a decoder reads as we would, so it is screened as text.
_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*={0,2}")
_TEXT_TYPES = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/yaml"}
)


@dataclass(frozen=True)
class Vocabulary:
    """One OpenAI API's fixed words: field names, enum values, and where binary media sits.

    The other OpenAI APIs (Responses, legacy completions) are read by the same
    walk with their own vocabulary: only the words that are not text differ.
    """

    fields: frozenset[str]
    enums: dict[str, frozenset[str]]
    binary_keys: frozenset[str] = frozenset()  # opaque payloads wherever they sit
    # Media by reference (a file id, a URL the receiver fetches): the reference is
    # screened as text, and what it points to, unseen, is counted as opaque.
    reference_keys: frozenset[str] = frozenset()
    # The top-level fields whose media slots hold media: what the model is sent to
    # see. Elsewhere (a tool's schema, metadata, an unknown field) the same shape is
    # JSON a model or the app reads as text, base64 and all.
    media_fields: frozenset[str] = frozenset({"messages"})
    # The list of the conversation's turns: each item, and each of its content
    # parts and tool calls, is a piece of its own (decide.pieces).
    conversation: str = "messages"
    longest: int = field(init=False)

    def __post_init__(self) -> None:
        # Folding maps each character to one or more (no ASCII letter is composed), so a
        # key longer than every field name cannot fold to one: no need to fold it.
        object.__setattr__(self, "longest", max(map(len, self.fields)))

    @property
    def folded(self) -> frozenset[str]:
        """The field names as a key-folding receiver matches them."""
        return _folded(self.fields)


@cache
def _folded(fields: frozenset[str]) -> frozenset[str]:
    return frozenset(fold_key(name) for name in fields)


class _Reading(Marked):
    """Walks a parsed body, collecting the text to screen and counting binary parts."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        super().__init__()
        self.opaque = 0
        self.fields, self.enums = vocabulary.fields, vocabulary.enums
        self.binary_keys = vocabulary.binary_keys
        self.reference_keys = vocabulary.reference_keys
        self.media_fields = vocabulary.media_fields
        self.media_here = False  # within a field of ``media_fields`` (set per top-level field)

    def value(self, value: Any, key: str | None, parent: str | None) -> None:
        # Recursion is bounded: read_json refused anything nested deeper than MAX_DEPTH.
        # Plain strings are taken inline: a body may hold a million of them.
        pieces, fields = self.pieces, self.fields
        if isinstance(value, str):
            self.string(value, key, parent)
        elif isinstance(value, dict):
            for child_key, child in value.items():
                if child_key not in fields and not _is_index(child_key) and child_key.strip():
                    pieces.append(child_key)
                if type(child) is str and self.plain(child_key, key):
                    if child.strip():
                        pieces.append(child)
                elif isinstance(child, str | dict | list):
                    self.value(child, child_key, key)
        elif isinstance(value, list):
            plain = self.plain(key, parent)
            for item in value:
                if plain and type(item) is str:
                    if item.strip():
                        pieces.append(item)
                elif isinstance(item, str | dict | list):
                    self.value(item, key, parent)  # items share the list's field and enum

    def plain(self, key: str | None, parent: str | None) -> bool:
        """Whether every string of this field is text, whatever its value."""
        return (
            _plain(key, parent)
            and key not in self.enums
            and key not in self.binary_keys
            and key not in self.reference_keys
        )

    def string(self, value: str, key: str | None, parent: str | None) -> None:
        if key in self.enums and value in self.enums[key]:
            return
        if not self.media_here:
            self.text(value)
            self.opaque += key in self.reference_keys
        elif _media(key, parent):
            self.media(value, reference=key in self.reference_keys)
        elif (parent == "input_audio" and key == "data") or key in self.binary_keys:
            self.binary(value)
        else:
            self.text(value)
            self.opaque += key in self.reference_keys

    def text(self, value: str) -> None:
        if value.strip():
            self.pieces.append(value)

    def binary(self, payload: str) -> None:
        if _is_base64(payload):
            self.opaque += 1
        else:
            self.text(payload)  # not a payload any decoder reads: whatever it is, screen it

    def media(self, value: str, *, reference: bool = False) -> None:
        """An image or file slot: a data URL, or else a URL (text; opaque too if a reference)."""
        match = _DATA_URL.match(value)
        if match is None:
            self.text(value)
            self.opaque += reference
            return
        params = [p.strip().lower() for p in match.group(1).split(";")]
        media_type = params[0] or "text/plain"  # RFC 2397's default
        payload = value[match.end() :]
        encoded = "base64" in params[1:]
        if not _is_text_type(media_type):
            if encoded:
                self.binary(payload)
            else:
                self.text(unquote_to_bytes(payload).decode("utf-8", "replace"))
            return
        raw = _base64_decoded(payload) if encoded else unquote_to_bytes(payload)
        try:
            self.text(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(
                "invalid_data_url", f"a {media_type} data URL is not UTF-8 text"
            ) from None


def _is_base64(payload: str) -> bool:
    return (
        _BASE64.fullmatch(payload) is not None
        and len(payload.replace("\r", "").replace("\n", "")) % 4 == 0
    )


def _base64_decoded(payload: str) -> bytes:
    try:
        return base64.b64decode(payload.replace("\r", "").replace("\n", ""), validate=True)
    except binascii.Error:
        # A lenient decoder skips what a strict one refuses: they would read
        # different text, so neither reading is screened as the receiver's.
        raise BadRequest("invalid_data_url", "a text data URL is not valid base64") from None


def _is_text_type(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_TYPES
        or media_type.endswith(("+json", "+xml"))
    )


def _media(key: str | None, parent: str | None) -> bool:
    return key in ("image_url", "file_data") or (parent == "image_url" and key == "url")


def _plain(key: str | None, parent: str | None) -> bool:
    """Whether every string of this field is text, whatever its value (enums aside)."""
    return not _media(key, parent) and key != "data"


def _is_index(key: str) -> bool:
    # logit_bias maps token ids to numbers: digits are not language.
    return key.isascii() and key.isdigit()


CHAT = Vocabulary(_FIELDS, _ENUMS)


def request_text(data: dict[str, Any], vocabulary: Vocabulary = CHAT) -> tuple[list[str], int]:
    """Every string of a request a receiver may read, in order; and its binary parts."""
    reading = _read(data, vocabulary)
    return reading.pieces, reading.opaque


def request_pieces(
    data: dict[str, Any], vocabulary: Vocabulary = CHAT
) -> tuple[list[str], list[Piece], int]:
    """``request_text``'s strings, the same strings as pieces, and the binary parts.

    A piece is a message, each of its content parts and tool calls, each tool
    definition, or another top-level field: what a client may drop or resend whole.
    """
    reading = _read(data, vocabulary)
    return reading.pieces, reading.grouped(), reading.opaque


# Lists whose items are pieces of their own: a message's, and the request's.
_PART_LISTS = frozenset({"content", "tool_calls"})
_DEFINITIONS = frozenset({"tools", "functions"})


def _read(data: dict[str, Any], vocabulary: Vocabulary) -> _Reading:
    reading = _Reading(vocabulary)
    fields = vocabulary.fields
    for key, value in data.items():
        reading.mark(field_location(key), "request")
        reading.media_here = key in vocabulary.media_fields
        if (
            key not in fields
            and len(key) <= vocabulary.longest
            and fold_key(key) in vocabulary.folded
        ):
            # "Stream" or "Me\u017f\u017fages" alone: a receiver that folds keys reads the API's
            # field, we would read an unknown one (and decide streaming, say, wrongly).
            raise BadRequest("ambiguous_key", f"{key!r} is not the API's field name; fix its case")
        if key not in fields and not _is_index(key):
            reading.text(key)
        if key == "model" and isinstance(value, str) and _MODEL_NAME.fullmatch(value):
            continue
        if key == vocabulary.conversation and isinstance(value, list):
            for i, message in enumerate(value):
                _read_message(reading, key, i, message)
        elif key in _DEFINITIONS and isinstance(value, list):
            for j, item in enumerate(value):
                reading.mark(f"{key}[{j}]", "tools")
                reading.value([item], key, None)  # one item: read as within its list
        else:
            reading.value(value, key, None)
    return reading


def _read_message(reading: _Reading, field: str, i: int, message: Any) -> None:
    """One turn, its content parts and tool calls each a piece; read as in the list."""
    here = f"{field}[{i}]"
    role = _role(message)
    if not isinstance(message, dict):
        reading.mark(here, role, i)
        reading.value([message], field, None)
        return
    for key, child in message.items():
        if key in _PART_LISTS and isinstance(child, list):
            for j, item in enumerate(child):
                reading.mark(f"{here}.{key}[{j}]", role, i)
                reading.value({key: [item]}, field, None)
        else:
            reading.mark(here, role, i)
            reading.value({key: child}, field, None)


def _role(message: Any) -> str:
    """Who wrote a turn: its role; a Responses item without one by its type (a tool's
    output is the tool's, a call or reasoning the assistant's)."""
    if not isinstance(message, dict):
        return "other"
    if "role" in message:
        return role_of(message["role"])
    kind = message.get("type")
    if isinstance(kind, str) and kind.endswith("_output"):
        return "tool"
    if isinstance(kind, str) and (kind.endswith("_call") or kind == "reasoning"):
        return "assistant"
    return "other"


def read_request(data: dict[str, Any], vocabulary: Vocabulary, *, code: str) -> ChatRequest:
    """A checked request body as the guard reads it: its text and pieces, whether it
    streams, its model, and the most the app may generate."""
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        # 1 or "yes" is false to us and true to JavaScript: refuse what may stream.
        raise BadRequest(code, "'stream' must be true, false or null")
    strings, pieces, opaque = request_pieces(data, vocabulary)
    model = data.get("model")
    limit = next(
        (
            data[k]
            for k in ("max_completion_tokens", "max_output_tokens", "max_tokens")
            if k in data
        ),
        None,
    )
    return ChatRequest(
        text="\n\n".join(strings),
        stream=stream is True,
        model=model if isinstance(model, str) else None,
        opaque=opaque,
        pieces=tuple(pieces),
        max_tokens=limit if type(limit) is int and limit > 0 else None,
    )
