"""A quick yes for answers that plainly match a task's output schema.

Checking each answer with jsonschema costs about 75 us (most of collecting a batch of
20,000 answers: docs/benchmarks.md). The schemas tasks use are small: objects of
enums, strings, numbers, booleans and arrays of them. `quick_check(schema)` compiles
such a schema into a plain function that says True only when the value surely matches;
anything else (a keyword it does not know, a value it is unsure of, a mismatch) is
left to jsonschema, which also words the error. So the quick check can only ever skip
work, never accept what jsonschema would refuse.

Understood keywords: `type` (a name or a list of names), `properties`, `required`,
`additionalProperties` (true or false, or absent), `enum`, `items` (one schema), and
the annotations `title`, `description`, `examples`, `$comment`. A schema with any other
keyword gets no quick check (None).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lanewise.memo import per_object

Check = Callable[[Any], bool]

ANNOTATIONS = frozenset({"title", "description", "examples", "$comment"})
KNOWN = frozenset({"type", "properties", "required", "additionalProperties", "enum",
                   "items"}) | ANNOTATIONS


def _is_type(name: str, value: Any) -> bool:
    """Surely of JSON type `name` (an integral float is left to jsonschema)."""
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "null":
        return value is None
    return False


def _enum_check(options: list[Any]) -> Check | None:
    """Membership for an enum of strings (other enums: no quick check, since 1 == 1.0
    == True in Python but not in JSON Schema)."""
    if not all(isinstance(option, str) for option in options):
        return None
    allowed = frozenset(options)
    return lambda value: isinstance(value, str) and value in allowed


def _compile(schema: Any) -> Check | None:
    if schema is True or schema == {}:
        return lambda value: True
    if not isinstance(schema, dict) or not set(schema) <= KNOWN:
        return None
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        checks.append(lambda value, names=tuple(names): any(_is_type(n, value)
                                                            for n in names))
    if "enum" in schema:
        enum = _enum_check(schema["enum"]) if isinstance(schema["enum"], list) else None
        if enum is None:
            return None
        checks.append(enum)
    if "items" in schema:
        item = _compile(schema["items"])
        if item is None:
            return None
        checks.append(lambda value, item=item: not isinstance(value, list)
                      or all(item(v) for v in value))
    if {"properties", "required", "additionalProperties"} & set(schema):
        members = _object_check(schema)
        if members is None:
            return None
        checks.append(members)
    return lambda value: all(check(value) for check in checks)


def _object_check(schema: dict[str, Any]) -> Check | None:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list) \
            or extra not in (True, False):
        return None
    compiled = {name: _compile(sub) for name, sub in properties.items()}
    if any(check is None for check in compiled.values()):
        return None
    needed = tuple(required)
    known = frozenset(properties)

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True  # these keywords apply to objects only
        if any(name not in value for name in needed):
            return False
        if extra is False and not value.keys() <= known:
            return False
        return all(compiled[name](member) for name, member in value.items()
                   if name in compiled)

    return check


@per_object
def quick_check(schema: dict[str, Any]) -> Check | None:
    """The schema's quick check (built once per schema object), or None when the schema
    uses a keyword it does not understand."""
    return _compile(schema)
