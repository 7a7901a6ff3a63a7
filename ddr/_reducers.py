"""Reducers: the default follows coffea's ``accumulate`` semantics.

``accumulate_pair(a, b)`` merges two partial results with coffea's own
``coffea.processor.accumulate`` (None is the identity; hist.Hist and numbers
add; sets union; dicts merge recursively), which copies its first argument, so
neither input is modified.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

__all__ = ["accumulate_pair", "reduce_all"]


def accumulate_pair(a: Any, b: Any) -> Any:
    from coffea.processor import accumulate

    if a is None:
        return b
    if b is None:
        return a
    return accumulate([a, b])


def reduce_all(items: Iterable[Any], reducer: Callable[[Any, Any], Any] = accumulate_pair) -> Any:
    items = list(items)
    while len(items) > 1:
        items = [reducer(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0] if items else None
