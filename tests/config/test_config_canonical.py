from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnirelay.config import FrozenDict, canonical_json, config_to_dict, load_config

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def test_exact_encoding() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"é": "ü", "z": "\n"}}
    assert canonical_json(value) == '{"a":{"z":"\\n","é":"ü"},"b":[1,2.5,null,true]}'.encode()


def test_key_order_does_not_matter() -> None:
    assert canonical_json({"a": 1, "b": {"c": 2, "d": 3}}) == canonical_json(
        {"b": {"d": 3, "c": 2}, "a": 1}
    )


def test_frozen_structures_encode_like_plain_ones() -> None:
    assert canonical_json(FrozenDict({"a": [1, {"b": 2}]})) == canonical_json({"a": [1, {"b": 2}]})
    assert canonical_json((1, 2)) == b"[1,2]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rejects_non_finite_numbers(bad: float) -> None:
    with pytest.raises(ValueError, match="no JSON encoding"):
        canonical_json({"a": [bad]})


def test_rejects_non_string_keys() -> None:
    # json.dumps would encode {1: "x"} as {"1": "x"}, the same bytes as a different value.
    with pytest.raises(TypeError, match="keys must be strings"):
        canonical_json({1: "x"})


def test_rejects_unsupported_types() -> None:
    with pytest.raises(TypeError, match="unsupported type set"):
        canonical_json({"a": {1, 2}})


def test_rejects_lone_surrogates() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json({"a": "\ud800"})


def test_config_encodes_as_its_normalized_document(doc: dict) -> None:
    config = load_config(doc)
    assert canonical_json(config) == canonical_json(config_to_dict(config))


@given(_json_values)
def test_deterministic_lossless_and_stable_through_json(value: object) -> None:
    encoded = canonical_json(value)
    assert canonical_json(value) == encoded
    assert canonical_json(json.loads(encoded)) == encoded
    assert json.loads(encoded) == value
