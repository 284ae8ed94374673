from __future__ import annotations

import copy
import pickle

import pytest

from omnirelay.config import FrozenDict


def test_values_are_frozen_deeply() -> None:
    frozen = FrozenDict({"a": [1, {"b": [2, 3]}], "c": {"d": None}})
    assert frozen["a"] == (1, FrozenDict({"b": (2, 3)}))
    assert isinstance(frozen["a"][1], FrozenDict)
    assert isinstance(frozen["c"], FrozenDict)


def test_read_api_matches_dict() -> None:
    frozen = FrozenDict({"a": 1}, b=2)
    assert dict(frozen) == {"a": 1, "b": 2}
    assert frozen.get("a") == 1 and frozen.get("z") is None
    assert "b" in frozen and "z" not in frozen
    assert list(frozen.keys()) == ["a", "b"]
    assert list(frozen.items()) == [("a", 1), ("b", 2)]
    assert len(frozen) == 2
    assert frozen == {"a": 1, "b": 2}
    assert frozen != {"a": 1}


def test_has_no_mutating_api() -> None:
    frozen = FrozenDict({"a": 1})
    with pytest.raises(TypeError):
        frozen["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del frozen["a"]  # type: ignore[attr-defined]
    for name in ("update", "pop", "setdefault", "clear", "popitem"):
        assert not hasattr(frozen, name)


def test_hash_follows_equality_not_insertion_order() -> None:
    one = FrozenDict({"a": 1, "b": [1, 2]})
    two = FrozenDict({"b": (1, 2), "a": 1})
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1


def test_to_dict_thaws_into_plain_mutable_copies() -> None:
    source = {"a": [1, {"b": [2]}], "c": {}}
    thawed = FrozenDict(source).to_dict()
    assert thawed == source
    assert type(thawed["a"]) is list and type(thawed["a"][1]) is dict
    thawed["a"].append(9)
    assert source["a"] == [1, {"b": [2]}]


def test_pickle_and_copy() -> None:
    frozen = FrozenDict({"a": [1, {"b": "c"}]})
    assert pickle.loads(pickle.dumps(frozen)) == frozen
    assert copy.deepcopy(frozen) == frozen
    assert repr(frozen) == "FrozenDict({'a': (1, FrozenDict({'b': 'c'}))})"
