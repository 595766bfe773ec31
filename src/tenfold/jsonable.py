"""One way to turn run results into plain JSON (what XCom, the registry's records and result files hold)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)  # paths, dates, enums: their text


def plain_json(value: Any) -> Any:
    """``value`` with only JSON types: dataclasses become dicts, tuples lists, any other value its ``str``. Mapping
    keys must be JSON's already (str, int, float, bool or None): ``json`` turns no other key into text."""
    return json.loads(json.dumps(value, default=_default))
