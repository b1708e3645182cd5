"""The quick schema check (lanewise/schema_check.py): it may only ever say yes where
jsonschema says valid; on the catalog's schemas it says yes to well-formed answers."""

from __future__ import annotations

import copy
import random

import jsonschema
import pytest

from lanewise.catalog import load_catalog
from lanewise.schema_check import quick_check

JSON_TASKS = [spec for spec in load_catalog().tasks.values() if spec.output.type == "json"]


def example(schema: dict, rng: random.Random):
    """A value that matches `schema` (the subset the catalog uses)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return {name: example(sub, rng) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [example(schema.get("items", {}), rng) for _ in range(rng.randint(0, 3))]
    return {"string": "text", "integer": rng.randint(-3, 50), "number": 1.5,
            "boolean": rng.random() < 0.5, "null": None}.get(kind, "x")


ODD_VALUES = [None, True, False, 0, 1, 1.0, 2.5, -1, "", "x", "billing", [], [1], {}, {"a": 1}]


def mutations(value, rng: random.Random):
    """Values near `value`: members dropped, added, retyped; items retyped."""
    if isinstance(value, dict):
        for name in list(value):
            smaller = dict(value)
            del smaller[name]
            yield smaller
            for odd in ODD_VALUES:
                yield {**value, name: odd}
            for inner in mutations(value[name], rng):
                yield {**value, name: inner}
        yield {**value, "unexpected": 1}
    if isinstance(value, list):
        for odd in ODD_VALUES:
            yield [*value, odd]
    yield from ODD_VALUES


@pytest.mark.parametrize("spec", JSON_TASKS, ids=[s.name for s in JSON_TASKS])
def test_the_quick_check_never_accepts_what_jsonschema_refuses(spec):
    schema = spec.output.json_schema
    quick = quick_check(schema)
    assert quick is not None  # every catalog schema is in the understood subset
    validator = jsonschema.validators.validator_for(schema)(schema)
    rng = random.Random(spec.name)
    seen_valid = seen_invalid = 0
    for _ in range(40):
        good = example(schema, rng)
        assert validator.is_valid(good) and quick(good)  # well-formed: the quick yes
        for value in mutations(copy.deepcopy(good), rng):
            valid = validator.is_valid(value)
            if quick(value):
                assert valid, (spec.name, value)
            seen_valid += valid
            seen_invalid += not valid
    assert seen_valid and seen_invalid


def test_what_it_does_not_understand_or_is_unsure_of_goes_to_jsonschema():
    assert quick_check({"type": "string", "pattern": "^a"}) is None  # unknown keyword
    assert quick_check({"type": "object", "properties": {"n": {"minimum": 1}}}) is None
    assert quick_check({"enum": [1, 2]}) is None  # 1 == 1.0 == True in Python
    integer = quick_check({"type": "integer"})
    assert integer(3) and not integer(True)
    assert not integer(3.0)  # valid JSON Schema, but left to jsonschema
    closed = quick_check({"type": "object", "properties": {"a": {"type": "string"}},
                          "required": ["a"], "additionalProperties": False})
    assert closed({"a": "x"}) and not closed({}) and not closed({"a": "x", "b": 1})
    assert quick_check({"type": "array", "items": {"type": "boolean"}})([True, False])
