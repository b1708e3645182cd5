"""Cursor pagination as both providers' list endpoints do it (newest first, by id)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def page_after(items: Sequence[T], item_id: Callable[[T], str], after: str | None,
               limit: int, render: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    """The page of `limit` items following id `after`; only that page is rendered.

    An unknown `after` gives an empty page, like a cursor past the end.
    """
    ids = [item_id(item) for item in items]
    start = 0 if not after else (ids.index(after) + 1 if after in ids else len(ids))
    window = items[start : start + limit]
    return {"data": [render(item) for item in window],
            "first_id": item_id(window[0]) if window else None,
            "last_id": item_id(window[-1]) if window else None,
            "has_more": start + limit < len(items)}
