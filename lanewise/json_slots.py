"""JSON texts with slots: a request dumped once with placeholder strings, cut at them,
so each row's text is the fixed pieces joined with its own escaped values (the batch
lane's line encoder and the result cache's request hasher both build on it)."""

from __future__ import annotations

import json


def split_at_marks(template: str, marks: list[str]) -> tuple[list[str], list[int]]:
    """A JSON text split at the JSON-encoded placeholder strings `marks`: the fixed
    pieces around them, and which mark stood at each cut, in order."""
    pieces: list[str] = []
    order: list[int] = []
    rest = template
    while True:
        found = [(rest.find(json.dumps(m)), i) for i, m in enumerate(marks)]
        found = [(pos, i) for pos, i in found if pos >= 0]
        if not found:
            break
        pos, index = min(found)
        pieces.append(rest[:pos])
        order.append(index)
        rest = rest[pos + len(json.dumps(marks[index])):]
    pieces.append(rest)
    return pieces, order
