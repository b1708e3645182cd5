"""How often two arms of a sample answer alike.

JSON tasks: per top-level schema field, the share of requests whose two answers hold
the same value (exact, after parsing), and the share whose every field matches. Text
tasks: difflib's `SequenceMatcher` ratio of the two answers (1.0 is identical), mean
and minimum. A request either arm did not answer validly (failed, invalid output, not
answered) counts as a disagreement (0 for text) and is listed with why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

from lanewise.catalog import TaskSpec


@dataclass(frozen=True)
class Answer:
    """One arm's answer to one sample request."""

    key: str
    status: str  # succeeded | invalid_output | failed | processing | missing
    text: str | None
    error: str | None = None
    wait_seconds: float | None = None
    answered_by: str | None = None  # live: live | fallback_model | cache | deferred | none

    @property
    def valid(self) -> bool:
        """Whether the arm answered as the task's output spec asks."""
        return self.status == "succeeded" and self.text is not None


@dataclass
class Agreement:
    """The agreement of two arms over a sample."""

    kind: str  # json | text
    requests: int
    field_shares: dict[str, float] = field(default_factory=dict)
    all_fields: float | None = None
    similarity_mean: float | None = None
    similarity_min: float | None = None
    #: Requests an arm did not answer validly: key, arm, status, error.
    problems: list[dict[str, Any]] = field(default_factory=list)
    #: Requests both answered validly but differently: key and how (JSON fields that
    #: differ with both values; text: the ratio).
    differences: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The agreement as JSON."""
        return {"kind": self.kind, "requests": self.requests,
                "field_match_share": self.field_shares, "all_fields_match_share":
                self.all_fields, "similarity_mean": self.similarity_mean,
                "similarity_min": self.similarity_min, "problems": self.problems,
                "differences": self.differences}


#: Why an answer that carries no error of its own is not valid.
_SILENT = {"missing": "not answered", "succeeded": "no answer text",
           "processing": "deferred to a later batch run"}


def _parsed(answer: Answer) -> Any:
    try:
        return json.loads(answer.text or "")
    except ValueError:
        return None


def _problems(key: str, answers: dict[str, Answer]) -> list[dict[str, Any]]:
    return [{"key": key, "arm": arm, "status": answer.status,
             "error": answer.error or _SILENT.get(answer.status)}
            for arm, answer in answers.items() if not answer.valid]


def compare(task: TaskSpec, keys: list[str], current: dict[str, Answer],
            proposed: dict[str, Answer]) -> Agreement:
    """The agreement of the `current` and `proposed` answers over the sample's `keys`."""
    kind = "json" if task.output.type == "json" else "text"
    result = Agreement(kind=kind, requests=len(keys))
    fields = task.output.fields()
    matches = dict.fromkeys(fields, 0)
    whole = 0
    ratios: list[float] = []
    for key in keys:
        pair = {"current": current.get(key) or Answer(key, "missing", None),
                "proposed": proposed.get(key) or Answer(key, "missing", None)}
        problems = _problems(key, pair)
        a, b = pair["current"], pair["proposed"]
        if kind == "text":
            ratio = 0.0 if problems else SequenceMatcher(None, a.text, b.text,
                                                         autojunk=False).ratio()
            ratios.append(ratio)
            if not problems and ratio < 1:
                result.differences.append({"key": key, "similarity": round(ratio, 4)})
        else:
            left, right = (None, None) if problems else (_parsed(a), _parsed(b))
            if not problems and not (isinstance(left, dict) and isinstance(right, dict)):
                problems = [{"key": key, "arm": "both", "status": "invalid_output",
                             "error": "an answer is not a JSON object"}]
            if problems:
                result.problems.extend(problems)
                continue
            differing = {f: {"current": left.get(f), "proposed": right.get(f)}
                         for f in fields if left.get(f) != right.get(f)}
            for name in fields:
                matches[name] += name not in differing
            same = not differing if fields else left == right
            whole += same
            if not same:
                result.differences.append({"key": key, "fields": differing})
            continue
        result.problems.extend(problems)
    n = len(keys)
    if kind == "text":
        result.similarity_mean = sum(ratios) / n if n else None
        result.similarity_min = min(ratios) if ratios else None
    else:
        result.field_shares = {name: matches[name] / n for name in fields} if n else {}
        result.all_fields = whole / n if n else None
    return result
