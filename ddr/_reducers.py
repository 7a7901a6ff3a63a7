"""Reducers: merge two partial results into one.

The default, :func:`accumulate_pair`, is coffea's own
``coffea.processor.accumulate`` applied to a pair, so ddr merges exactly like
coffea's executors do:

* ``None`` is the identity (``accumulate_pair(None, x) is x``);
* addable values (``hist.Hist``, numbers, numpy arrays, coffea accumulators)
  are added with ``+``; sets are united with ``|``;
* mappings merge key by key, recursively; a key present on one side only is
  deep-copied.

Neither input is modified: coffea's ``accumulate`` copies its first argument
before adding. Note that ``+`` on awkward arrays adds element-wise; to
concatenate skims pass a reducer such as ``lambda a, b: ak.concatenate([a, b])``.

:func:`reduce_all` folds any number of partials with any reducer as a
balanced tree, streaming (it holds O(log n) partials), keeping the order of
the inputs, so associative but non-commutative reducers (concatenation) work.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ._extras import require

__all__ = ["accumulate_pair", "reduce_all"]


def accumulate_pair(a: Any, b: Any) -> Any:
    """Merge two partial results with coffea's ``accumulate`` semantics, without mutating them."""
    if a is None:
        return b
    if b is None:
        return a
    processor = require("coffea.processor", purpose="merge results with coffea's accumulate")
    return processor.accumulate([a, b])


def reduce_all(items: Iterable[Any], reducer: Callable[[Any, Any], Any] = accumulate_pair) -> Any:
    """Reduce ``items`` pairwise as a balanced tree; None for no items."""
    stack: list[tuple[int, Any]] = []  # (level, value); levels strictly decrease along the stack
    for value in items:
        level = 0
        while stack and stack[-1][0] == level:
            value = reducer(stack.pop()[1], value)
            level += 1
        stack.append((level, value))
    if not stack:
        return None
    result = stack.pop()[1]
    while stack:
        result = reducer(stack.pop()[1], result)
    return result
