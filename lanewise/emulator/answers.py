"""Deterministic answers: the same request always gets the same answer.

Rules (documented in docs/emulator.md):

* The *subject* of a request is its last user message; if that message has a blank
  line, only what follows the first blank line (instructions go first, input after).
* A text answer is a shortened form of the subject: its first sentences, at most
  `SUMMARY_WORDS` words.
* A JSON-schema answer is a valid instance of the schema. An enum value is chosen by
  the words of the subject: each value scores one point per match of its own words or
  of its entry in `LEXICON`; the best score wins, ties go to the earlier value, and
  with no match a neutral value (`other`, `neutral`, `medium`, `none`, `unknown`) is
  taken when the enum has one, else the first value. Other leaves (numbers, booleans)
  come from a hash of the subject, so they are stable but not meaningful.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

SUMMARY_WORDS = 30
NEUTRAL_VALUES = ("other", "neutral", "medium", "none", "unknown")

LEXICON: dict[str, tuple[str, ...]] = {
    "billing": ("bill", "billed", "billing", "charge", "charged", "invoice", "refund",
                "payment", "paid", "card", "price", "pricing", "subscription", "receipt",
                "overcharged"),
    "login": ("login", "log in", "sign in", "password", "2fa", "two-factor", "locked out",
              "sso", "reset link", "verification code"),
    "export": ("export", "exports", "csv", "download", "spreadsheet", "xlsx"),
    "bug": ("bug", "error", "crash", "crashes", "broken", "fails", "not working", "glitch",
            "freezes", "blank page"),
    "feature_request": ("feature", "would be nice", "please add", "wish", "could you add",
                        "suggestion", "dark mode", "integration with"),
    "account": ("account", "profile", "email address", "username", "delete my",
                "close my", "team member", "seat"),
    "negative": ("angry", "frustrated", "terrible", "unacceptable", "annoyed",
                 "disappointed", "worst", "ridiculous", "charged twice", "still"),
    "positive": ("thanks", "thank you", "great", "love", "awesome", "appreciate"),
    "high": ("urgent", "asap", "immediately", "outage", "cannot", "can't", "blocked",
             "critical", "charged twice", "right now"),
    "low": ("whenever", "no rush", "minor", "just curious", "suggestion", "would be nice"),
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def subject_text(messages: list[dict[str, Any]], flatten) -> str:
    """The part of the request the answer is about (see the module rules)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = flatten(message.get("content"))
            head, sep, tail = text.partition("\n\n")
            return (tail if sep and tail.strip() else text).strip()
    return ""


def summarize(text: str, max_words: int = SUMMARY_WORDS) -> str:
    """A shortened form of `text`: whole first sentences up to `max_words` words."""
    collapsed = " ".join(text.split())
    if not collapsed:
        return ""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(collapsed):
        words = sentence.split()
        if out and len(out) + len(words) > max_words:
            break
        out.extend(words)
        if len(out) >= max_words:
            break
    return " ".join(out[:max_words])


@lru_cache(maxsize=4096)
def _pattern(value: str) -> re.Pattern[str]:
    phrases = {value.lower().replace("_", " "), value.lower()}
    phrases.update(LEXICON.get(value.lower(), ()))
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])")


def choose_enum(values: list[Any], text: str) -> Any:
    """Pick the enum value whose words appear most in `text` (see module rules)."""
    lowered = text.lower()
    best, best_score = None, 0
    for value in values:
        if not isinstance(value, str):
            continue
        score = len(_pattern(value).findall(lowered))
        if score > best_score:
            best, best_score = value, score
    if best is not None:
        return best
    for value in values:
        if isinstance(value, str) and value.lower() in NEUTRAL_VALUES:
            return value
    return values[0] if values else None


def _digest(*parts: str) -> int:
    joined = "\x1f".join(parts).encode()
    return int.from_bytes(hashlib.blake2b(joined, digest_size=8).digest(), "big")


def instance_of(schema: dict[str, Any], text: str, *, root: dict[str, Any] | None = None,
                path: str = "$") -> Any:
    """A valid instance of JSON `schema`, derived deterministically from `text`."""
    root = root if root is not None else schema
    if "$ref" in schema:
        ref = schema["$ref"]
        target: Any = root
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        return instance_of(target, text, root=root, path=path)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return choose_enum(list(schema["enum"]), text)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema and schema[key]:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return instance_of(options[0], text, root=root, path=path)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties", {})
        return {
            name: instance_of(sub, text, root=root, path=f"{path}.{name}")
            for name, sub in props.items()
        }
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        count = min(count, int(schema.get("maxItems", count)))
        items = schema.get("items", {"type": "string"})
        return [instance_of(items, text, root=root, path=f"{path}[{i}]") for i in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10))
        if "exclusiveMinimum" in schema:
            low += 1
        if "exclusiveMaximum" in schema:
            high -= 1
        span = max(int(high) - int(low), 0)
        value = int(low) + (_digest(path, text) % (span + 1) if span else 0)
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return bool(_digest(path, text) % 2)
    if kind == "null":
        return None
    summary = summarize(text) or "n/a"
    max_length = schema.get("maxLength")
    if max_length is not None:
        summary = summary[: int(max_length)]
    min_length = int(schema.get("minLength", 0))
    return summary.ljust(min_length, ".")
