"""Reading policy YAML with line numbers, and turning validation errors into plain words.

An operator who mistyped a policy should see ``file:line: field: what was expected``,
not a pydantic traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One thing wrong with a policy file."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class PolicyError(ValueError):
    """A policy file that cannot be used; ``issues`` says where and why."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("invalid policy:\n" + "\n".join(f"  {i}" for i in self.issues))

    @classmethod
    def single(cls, file: str, line: int, field: str, message: str) -> PolicyError:
        """An error with one issue."""
        return cls([PolicyIssue(file, line, field, message)])


class _Loader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys: YAML keeps the last, silently."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(text: str, *, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML; return the data and the line of every key and item in it."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise PolicyError.single(source, line, "", f"not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError.single(source, 0, "", f"not valid YAML: {exc}") from None
    lines: dict[Path_, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def _index_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            _index_lines(value_node, child, lines)
            # Point at the key, not the value: that is the line a reader looks for.
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines)


def explain(
    exc: ValidationError, *, source: str, data: Any, lines: dict[Path_, int]
) -> PolicyError:
    """Translate pydantic errors into issues with file, line and dotted field."""
    errors = [(_data_path(e["loc"], data), e) for e in exc.errors(include_url=False)]
    issues = []
    for path, error in errors:
        if any(len(other) > len(path) and other[: len(path)] == path for other, _ in errors):
            continue  # a container's error that only echoes its item's error
        line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), 0)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; allowed keys are in the README)"
        elif error["type"] not in ("missing", "policy") and "input" in error:
            message = f"{message} (got {error['input']!r})"
        issues.append(PolicyIssue(source, line, _dotted(path), message))
    return PolicyError(issues)


def _data_path(loc: tuple[int | str, ...], data: Any) -> Path_:
    """Drop the parts of a pydantic location that are not in the data (union tags)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(part, str) and _is_tag(part, node):
            continue
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, Mapping) and isinstance(part, str):
            path.append(part)  # a missing key
            node = None
        else:
            break
    return tuple(path)


def _is_tag(part: str, node: Any) -> bool:
    return isinstance(node, Mapping) and node.get("type") == part


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
