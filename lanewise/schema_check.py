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
        checks.append(_type_check(tuple(names)))
    if "enum" in schema:
        enum = _enum_check(schema["enum"]) if isinstance(schema["enum"], list) else None
        if enum is None:
            return None
        if kind is not None and "string" in names:
            checks.pop()  # a member of an enum of strings is a string: one check is enough
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
    return _all_of(checks)


def _all_of(checks: list[Check]) -> Check:
    """One check that passes when every check passes (spelled out for one and two:
    answers are checked one by one, tens of thousands of them)."""
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    return lambda value: all(check(value) for check in checks)


#: JSON types a plain isinstance answers (integer and number are not: bool is an int).
_PLAIN_TYPES = {"string": (str,), "object": (dict,), "array": (list,), "boolean": (bool,),
                "null": (type(None),)}


def _type_check(names: tuple[str, ...]) -> Check:
    """Surely of one of the JSON types `names`."""
    if all(name in _PLAIN_TYPES for name in names):
        types = tuple(t for name in names for t in _PLAIN_TYPES[name])
        return lambda value: isinstance(value, types)
    return lambda value: any(_is_type(name, value) for name in names)


def _object_check(schema: dict[str, Any]) -> Check | None:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list) \
            or not all(isinstance(name, str) for name in required) \
            or extra not in (True, False):
        return None
    compiled = {name: _compile(sub) for name, sub in properties.items()}
    if any(check is None for check in compiled.values()):
        return None
    needed = frozenset(required)
    known = frozenset(properties)

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True  # these keywords apply to objects only
        keys = value.keys()
        if not needed <= keys or (extra is False and not keys <= known):
            return False
        for name, member in value.items():
            member_check = compiled.get(name)
            if member_check is not None and not member_check(member):
                return False
        return True

    return check


@per_object
def quick_check(schema: dict[str, Any]) -> Check | None:
    """The schema's quick check (built once per schema object), or None when the schema
    uses a keyword it does not understand."""
    return _compile(schema)
