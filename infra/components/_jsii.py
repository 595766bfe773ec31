"""jsii converts a struct given as a dict only at the top of a parameter; structs inside lists must be
given with the JavaScript (camelCase) property names. :func:`structs` does that for a list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _convert(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _convert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(v) for v in value]
    return value


def structs(items: Iterable[dict[str, Any]]) -> list[Any]:
    """A list of struct dicts (snake_case keys, nested structs allowed) in the form jsii accepts."""
    return [_convert(item) for item in items]
