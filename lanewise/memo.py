"""Memoizing by object identity, for values derived from unhashable specs (schemas)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")
MAX_ENTRIES = 256


def per_object(func: Callable[[Any], R]) -> Callable[[Any], R]:
    """Remember `func(obj)` per object: a task's schema is the same dict for every row,
    so what is derived from it (token count, validator) is computed once, not per row.

    Each entry holds the object itself, so its id cannot be reused while cached.
    """
    cache: dict[int, tuple[Any, R]] = {}

    @functools.wraps(func)
    def wrapper(obj: Any) -> R:
        hit = cache.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
        value = func(obj)
        cache[id(obj)] = (obj, value)
        return value

    return wrapper
