"""The SDK's method table (``banger.methods.PARAMS``) against the
checked-in method schemas, generated from the daemon's wire types
(``docs/schemas/rpc.json``): no daemon needed."""

import json
from pathlib import Path

import pytest

from banger import methods

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas" / "rpc.json"


def _schemas():
    return json.loads(SCHEMAS.read_text())


def _params_schema(doc, method):
    schema = doc["methods"][method]["params"]
    ref = schema.get("$ref")
    if ref:
        schema = doc["$defs"][ref.rsplit("/", 1)[-1]]
    return schema


@pytest.mark.parametrize("method", sorted(methods.PARAMS))
def test_every_method_and_parameter_the_sdk_sends_is_in_the_schemas(method):
    doc = _schemas()
    assert method in doc["methods"], f"{method} is not a daemon method"
    schema = _params_schema(doc, method)
    properties = set(schema.get("properties", {}))
    sent = methods.PARAMS[method]
    assert sent <= properties, f"{method}: not in the schema: {sorted(sent - properties)}"
    required = set(schema.get("required", []))
    assert required <= sent, f"{method}: the SDK never sends required {sorted(required - sent)}"


def test_a_parameter_the_daemon_does_not_take_is_refused_before_sending():
    with pytest.raises(ValueError, match="unknown parameters"):
        methods.check_params("vm.show", {"name": "a", "nmae": "b"})
    with pytest.raises(ValueError, match="does not call"):
        methods.check_params("vm.fly", {})
