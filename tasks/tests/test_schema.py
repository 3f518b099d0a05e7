"""Task output schemas (JSON Schema draft 2020-12 through jsonschema), pure."""
from __future__ import annotations

import pytest

from tasks.schema import output_parse, output_validate, schema_check, schema_validate

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
    ({"$ref": "#/defs/x"}, "$.$ref: cannot be resolved within the schema (#/defs/x)"),
    ({"type": "text"}, "$.type: must be one of array, boolean, integer, null, number, object"),
    ({"properties": {"a": {"minLength": -1}}}, "$.properties.a.minLength: must be at least 0"),
    ({"pattern": "("}, "$.pattern: must be a valid regex"),
    ({"anyOf": []}, "$.anyOf: must have at least 1 items"),
    ({"properties": {"a": {"requried": ["b"]}}}, "$.properties.a.requried: unsupported keyword"),
    ({"items": {"$ref": "https://example.test/schema.json"}},
     "$.items.$ref: cannot be resolved within the schema (https://example.test/schema.json)"),
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


DEFS = {
    "$defs": {
        "reason": {"type": "object", "required": ["code"], "additionalProperties": False,
                   "properties": {"code": {"type": "string"}, "detail": {"$ref": "#/$defs/text"}}},
        "text": {"type": "string", "maxLength": 5},
    },
    "type": "object",
    "properties": {"reasons": {"type": "array", "items": {"$ref": "#/$defs/reason"}}},
}


def test_schemas_with_defs_and_refs_are_checked_and_applied():
    assert schema_check(DEFS) == []
    assert schema_validate({"reasons": [{"code": "a", "detail": "short"}]}, DEFS) == []
    assert schema_validate({"reasons": [{"code": 1}, {"code": "b", "detail": "too long", "x": 0}]},
                           DEFS) == ["$.reasons[0].code: must be of type string",
                                     "$.reasons[1].detail: must be at most 5 characters long",
                                     "$.reasons[1].x: is not an allowed property"]


def test_other_draft_keywords_work_and_messages_never_quote_the_value():
    schema = {"type": "object", "minProperties": 1, "propertyNames": {"pattern": "^[a-z]+$"},
              "patternProperties": {"^n_": {"type": "number", "multipleOf": 5}},
              "if": {"required": ["kind"]}, "then": {"required": ["detail"]}}
    assert schema_check(schema) == []
    assert schema_validate({"kind": "x" * 1000}, schema) == ["$: the property 'detail' is required"]
    assert schema_validate({"n_a": 7}, {"patternProperties": schema["patternProperties"]}) == \
        ["$.n_a: must be a multiple of 5"]


def test_remote_references_are_never_fetched(monkeypatch):
    import urllib.request

    from referencing.exceptions import Unresolvable

    def fetch(*args, **kwargs):
        raise AssertionError("a $ref was fetched")

    monkeypatch.setattr(urllib.request, "urlopen", fetch)
    schema = {"$ref": "https://example.test/schema.json"}
    assert schema_check(schema)
    with pytest.raises(Unresolvable):
        schema_validate({}, schema)
