"""Task output schemas: the supported JSON Schema subset, pure."""
from __future__ import annotations

import pytest

from chat.schema import output_parse, output_validate, schema_check, schema_validate

SCHEMA = {
    "type": "object",
    "required": ["risk", "reasons"],
    "additionalProperties": False,
    "properties": {
        "risk": {"enum": ["low", "medium", "high"]},
        "score": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "reasons": {"type": "array", "items": {"type": "string", "minLength": 3},
                    "minItems": 1, "uniqueItems": True},
        "owner": {"type": ["string", "null"], "pattern": "^[a-z]+$"},
        "count": {"type": "integer"},
    },
}


def test_a_matching_value_has_no_errors():
    value = {"risk": "low", "score": 0.5, "reasons": ["fine", "known"], "owner": None, "count": 3.0}
    assert schema_check(SCHEMA) == []
    assert schema_validate(value, SCHEMA) == []


@pytest.mark.parametrize("value, errors", [
    ([], ["$: must be of type object"]),
    ({"risk": "low"}, ["$: the property 'reasons' is required"]),
    ({"risk": "x", "reasons": ["abc"]}, ['$.risk: must be one of ["low", "medium", "high"]']),
    ({"risk": "low", "reasons": ["abc"], "score": 1}, ["$.score: must be less than 1"]),
    ({"risk": "low", "reasons": ["abc"], "score": True}, ["$.score: must be of type number"]),
    ({"risk": "low", "reasons": ["abc"], "count": 1.5}, ["$.count: must be of type integer"]),
    ({"risk": "low", "reasons": []}, ["$.reasons: must have at least 1 items"]),
    ({"risk": "low", "reasons": ["ab"]}, ["$.reasons[0]: must be at least 3 characters long"]),
    ({"risk": "low", "reasons": ["abc", "abc"]}, ["$.reasons[1]: duplicates an earlier item"]),
    ({"risk": "low", "reasons": ["abc"], "owner": "Bob"}, ["$.owner: must match the pattern ^[a-z]+$"]),
    ({"risk": "low", "reasons": ["abc"], "extra": 1}, ["$.extra: is not an allowed property"]),
])
def test_violations_name_the_path(value, errors):
    assert schema_validate(value, SCHEMA) == errors


def test_combinators_and_const():
    schema = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert schema_validate("x", schema) == [] and schema_validate(2, schema) == []
    assert schema_validate(None, schema) == ["$: must match at least one of the anyOf schemas"]
    one = {"oneOf": [{"type": "number"}, {"type": "integer"}]}
    assert schema_validate(1.5, one) == []
    assert schema_validate(1, one) == ["$: must match exactly one of the oneOf schemas (matched 2)"]
    assert schema_validate(True, {"const": 1}) == ["$: must be 1"]
    assert schema_validate(1.0, {"const": 1}) == []


@pytest.mark.parametrize("schema, problem", [
    ([], "$: a schema must be an object"),
    ({"$ref": "#/defs/x"}, "$.$ref: unsupported keyword"),
    ({"type": "text"}, "$.type: must be one of"),
    ({"properties": {"a": {"minLength": -1}}}, "$.properties.a.minLength: must be a non-negative"),
    ({"pattern": "("}, "$.pattern: must be a regular expression"),
    ({"anyOf": []}, "$.anyOf: must be a non-empty list"),
])
def test_unusable_schemas_are_refused(schema, problem):
    assert schema_check(schema)[0].startswith(problem)


def test_annotations_are_accepted():
    assert schema_check({"title": "T", "description": "d", "format": "email", "type": "string",
                         "$schema": "https://json-schema.org/draft/2020-12/schema"}) == []


def test_output_is_read_as_json_with_or_without_a_code_fence():
    assert output_parse('{"a": 1}') == ({"a": 1}, None)
    assert output_parse('```json\n{"a": 1}\n```') == ({"a": 1}, None)
    value, error = output_parse("Sure! Here it is")
    assert value is None and error.startswith("$: the output is not JSON")
    assert output_validate('```\n{"risk": "low", "reasons": ["abc"]}\n```', SCHEMA) == \
        ({"risk": "low", "reasons": ["abc"]}, [])
