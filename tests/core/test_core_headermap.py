"""HeaderMap (the core's header arena) against a list-of-pairs reference model."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnirelay._core import HeaderMap

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
BASE_NAMES = ["host", "x-a", "X-B", "content-type", "via", "set-cookie", "x-request-id", "a"]


@st.composite
def header_names(draw):
    if draw(st.booleans()):
        base = draw(st.sampled_from(BASE_NAMES))
        # Same name, random case: the map must treat them as one name.
        return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in base)
    return draw(st.text(alphabet=TCHAR, min_size=1, max_size=40))


header_values = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=255,
                           blacklist_characters="\r\n\x00"),
    max_size=300)

ops = st.one_of(
    st.tuples(st.just("add"), header_names(), header_values),
    st.tuples(st.just("set"), header_names(), header_values),
    st.tuples(st.just("remove"), header_names()),
    st.tuples(st.just("get"), header_names()),
    st.tuples(st.just("getall"), header_names()),
    st.tuples(st.just("contains"), header_names()),
)


class Model:
    def __init__(self):
        self.pairs: list[tuple[str, str]] = []

    def add(self, n, v):
        self.pairs.append((n, v))

    def set(self, n, v):
        self.remove(n)
        self.pairs.append((n, v))

    def remove(self, n):
        before = len(self.pairs)
        self.pairs = [(k, v) for k, v in self.pairs if k.lower() != n.lower()]
        return before - len(self.pairs)

    def getall(self, n):
        return [v for k, v in self.pairs if k.lower() == n.lower()]

    def get(self, n):
        vals = self.getall(n)
        return vals[0] if vals else None


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=150))
def test_headermap_matches_reference_model(program):
    h = HeaderMap()
    m = Model()
    for op in program:
        kind, name = op[0], op[1]
        if kind == "add":
            h.add(name, op[2])
            m.add(name, op[2])
        elif kind == "set":
            h.set(name, op[2])
            m.set(name, op[2])
        elif kind == "remove":
            assert h.remove(name) == m.remove(name)
        elif kind == "get":
            assert h.get(name) == m.get(name)
        elif kind == "getall":
            assert h.getall(name) == m.getall(name)
        else:
            assert (name in h) == bool(m.getall(name))
        assert len(h) == len(m.pairs)
    assert h.items() == m.pairs
    assert h.keys() == [k for k, _ in m.pairs]
    assert list(h) == [k for k, _ in m.pairs]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(header_names(), header_values), max_size=80))
def test_headermap_from_items_round_trip(pairs):
    h = HeaderMap.from_items(pairs)
    assert h.items() == pairs
    for name, _ in pairs:
        assert h[name] == next(v for k, v in pairs if k.lower() == name.lower())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(header_names(), header_values), max_size=20),
       st.sampled_from(["a\rb", "a\nb", "a\x00b", "\r\n", "x\r\nInjected: 1"]))
def test_headermap_rejects_values_that_would_inject_lines(pairs, bad):
    h = HeaderMap.from_items(pairs)
    with pytest.raises(ValueError):
        h.add("x-bad", bad)
    with pytest.raises(ValueError):
        h.set("x-bad", bad)
    assert h.items() == pairs


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "a\r", "a\nb", "a\x00"])
def test_headermap_rejects_invalid_names(bad):
    h = HeaderMap()
    with pytest.raises(ValueError):
        h.add(bad, "v")
    assert h.items() == []


def test_headermap_missing_name():
    h = HeaderMap.from_items([("A", "1")])
    with pytest.raises(KeyError):
        h["b"]
    with pytest.raises(KeyError):
        del h["b"]
    assert h.get("b", "dflt") == "dflt"
    del h["a"]
    assert len(h) == 0 and h.items() == []
