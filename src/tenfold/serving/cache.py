"""A bounded LRU cache of predictions, keyed by the model version and a canonical hash of the request.

The key is ``(model_version, sha256(canonical JSON of the validated request without its user key))``:
the user key only routes a request (A/B bucket), it never changes the features, so two users asking
about the same flight share an entry. Because the version is part of every key, a replica that loads
another version can never be served an entry computed by the old one, even if the cache object
outlived the swap. The lookup tables are fixed for a replica's life (loaded once at startup), so they
need no place in the key. Accessed from the event loop only, so it needs no lock.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel

# Routing only: never part of what a prediction depends on.
ROUTING_FIELDS = frozenset({"user_key"})


def request_digest(request: BaseModel) -> str:
    """SHA-256 of the validated request's canonical JSON (the model's field order, routing fields dropped).

    Validation has already normalised the values (types, datetimes), and pydantic serialises the fields in
    the order the model declares them, so equal requests written differently (key order, ``1545`` vs
    ``1545.0``) hash the same. (pydantic's own serialiser: a fifth of the cost of ``json.dumps`` of a dump.)
    """
    routing = _routing_fields(type(request))
    return hashlib.sha256(request.model_dump_json(exclude=set(routing) or None).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _routing_fields(model: type[BaseModel]) -> frozenset[str]:
    return ROUTING_FIELDS & frozenset(model.model_fields)


CacheKey = tuple[str, str]


class PredictionCache:
    """At most ``max_entries`` probabilities, least recently used evicted first; 0 turns it off."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(model_version: str, request: BaseModel) -> CacheKey:
        return (model_version, request_digest(request))

    def get(self, key: CacheKey) -> float | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: CacheKey, value: float) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._entries), "max_entries": self.max_entries}
