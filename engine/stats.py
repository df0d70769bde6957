"""Process-wide counters the engine keeps for operators (exported by the API as metrics)."""
from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def incr(name: str, amount: int = 1) -> None:
    with _lock:
        _counts[name] += amount


def get(name: str) -> int:
    with _lock:
        return _counts[name]
