"""A bounded least-recently-used cache, optionally with a time to live: every cache of the edge has a limit."""

import collections
from typing import Any, Hashable

MISSING = object()


class LruCache:
    """At most `max_entries` values, the least recently used dropped first; with `ttl_s`, a value older than that
    (by the `now_s` its callers pass, from one clock) is not returned."""

    def __init__(self, max_entries: int, ttl_s: float | None = None) -> None:
        if max_entries < 1:
            raise ValueError("a cache needs room for at least one entry")
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: collections.OrderedDict[Hashable, tuple[Any, float]] = collections.OrderedDict()

    def get(self, key: Hashable, now_s: float = 0.0) -> Any:
        """The value, or MISSING when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        if self._ttl_s is not None and now_s - entry[1] >= self._ttl_s:
            del self._entries[key]
            return MISSING
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any, now_s: float = 0.0) -> None:
        self._entries[key] = (value, now_s)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
