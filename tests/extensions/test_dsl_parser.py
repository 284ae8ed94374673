"""The rule language's grammar: what parses, what the tree holds, and the errors (line,
column, excerpt) for what does not; static step costs."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnirelay.extensions.dsl import DslSyntaxError, compile_rules
from omnirelay.extensions.dsl import tree as t
from omnirelay.extensions.dsl.parser import MAX_DEPTH, MAX_SOURCE_CHARS, parse

EXAMPLE = """
# gold tenants of the API go to the v2 cluster
when method == "POST" and path ~ "^/api/" and header("X-Tenant") in ["a", "b"] {
    set request header "x-tier" = "gold";
    route "api-v2"
}
when source.ip in 10.0.0.0/8 or source.ip in ["fd00::/8", 192.168.0.0/16] {
    add response header "x-internal" = "1"
}
when jwt.claim("realm_access.roles") == "admin" and not (query("debug") exists) {
    ratelimit_key "user:" + jwt.claim("sub")
    stop
}
when host suffix ".example.com" or path prefix "/v1" or header("ua") contains "bot" {
    remove request header "cookie"; reply 403 "forbidden: " + path
}
when true {}
"""


def test_example_parses_into_the_expected_tree():
    rules = parse(EXAMPLE).rules
    assert [r.pos.line for r in rules] == [3, 7, 10, 14, 17]
    first = rules[0]
    assert isinstance(first.condition, t.BoolOp) and first.condition.op == "and"
    eq, rx, inl = first.condition.operands
    assert isinstance(eq, t.Compare) and eq.op == "==" and eq.right == t.Literal("POST",
                                                                                 eq.right.pos)
    assert isinstance(rx, t.Regex) and rx.pattern == "^/api/"
    # header names are lowercase; list items a set
    assert isinstance(inl, t.InList) and inl.left.arg == ("x-tenant",)
    assert inl.items == frozenset({"a", "b"})
    assert [type(a) for a in first.actions] == [t.HeaderAction, t.Route]
    assert first.actions[1].cluster == "api-v2"
    assert first.actions[1].pos == t.Pos(5, 11)
    cidr = rules[1].condition.operands[1]
    assert isinstance(cidr, t.InCidr) and cidr.count == 2
    assert "192.168.4.5" in cidr.cidrs and "fd00::1" in cidr.cidrs and "10.0.0.1" not in cidr.cidrs
    claim = rules[2].condition.operands[0].left
    assert claim == t.Field("jwt.claim", ("realm_access.roles",), claim.pos)
    assert isinstance(rules[2].condition.operands[1], t.Not)
    key = rules[2].actions[0]
    assert isinstance(key, t.RateLimitKey) and isinstance(key.value, t.Concat)
    assert isinstance(rules[2].actions[1], t.Stop)
    reply = rules[3].actions[1]
    assert isinstance(reply, t.Reply) and reply.status == 403
    assert rules[4].actions == () and rules[4].condition.value is True


def test_precedence_not_and_or():
    cond = parse('when not method == "A" and path == "/" or host == "h" {}').rules[0].condition
    # (not (method == A) and path == /) or host == h
    assert isinstance(cond, t.BoolOp) and cond.op == "or"
    left, right = cond.operands
    assert isinstance(left, t.BoolOp) and left.op == "and"
    assert isinstance(left.operands[0], t.Not)
    assert isinstance(right, t.Compare) and right.left.kind == "host"


def test_claim_path_forms_and_escapes():
    r = parse('when jwt.claim("https://x.example/roles", "admin") exists '
              '{ reply 200 "a\\"b\\\\c\\td" }').rules[0]
    assert r.condition.field.arg == ("https://x.example/roles", "admin")
    assert r.actions[0].body.text == 'a"b\\c\td'


def test_separators_are_optional_and_comments_ignored():
    a = parse('when true { route "a" route "b"; stop; }  # trailing comment').rules[0]
    assert [type(x) for x in a.actions] == [t.Route, t.Route, t.Stop]


def test_empty_text_is_no_rules():
    assert parse("").rules == () and parse("  # only a comment\n\n").rules == ()


def syntax_error(text: str) -> DslSyntaxError:
    with pytest.raises(DslSyntaxError) as info:
        parse(text)
    return info.value


@pytest.mark.parametrize(("text", "line", "col", "words"), [
    ('when method = "x" {}', 1, 13, "expected an operator"),
    ('when true {\n  set request header "x" "v"\n}', 2, 26, "expected '='"),
    ('when true {\n  route api\n}', 2, 9, "cluster name in double quotes"),
    ('when path ~ "(a" {}', 1, 13, "invalid regular expression '(a'"),
    ('when path ~ "(a)\\\\1" {}', 1, 13, "invalid regular expression"),
    ('when {', 1, 6, "expected a condition"),
    ('when true { set request header "x" = "1"', 1, 41, "expected '}' to close the rule"),
    ('if true {}', 1, 1, "expected a rule"),
    ('when true { frobnicate }', 1, 13, "expected an action"),
    ('when true { reply 99 }', 1, 19, "from 200 to 599"),
    ('when true { reply 200 "x }', 1, 23, "unterminated string"),
    ('when header("a b") exists {}', 1, 13, "invalid header name 'a b'"),
    ('when header("a", "b") exists {}', 1, 18, "takes one name"),
    ('when header() exists {}', 1, 6, "needs a name"),
    ('when jwt.claim("a..b") exists {}', 1, 16, "invalid claim path"),
    ('when "a" exists {}', 1, 6, "'exists' applies to one request value"),
    ('when method + "x" exists {}', 1, 6, "'exists' applies"),
    ('when source.ip in 300.0.0.0/8 {}', 1, 19, "invalid address range '300.0.0.0/8'"),
    ('when source.ip in [10.0.0.0/8, "nope"] {}', 1, 32, "invalid address range 'nope'"),
    ('when method in "GET" {}', 1, 16, "expected a list after 'in'"),
    ('when method in ["GET", 10.0.0.1] {}', 1, 24, "list items are strings"),
    ('when method in ["GET" "POST"] {}', 1, 23, "',' or ']'"),
    ('when true { set request header "content-length" = "1" }', 1, 32, "frames the message"),
    ('when true { set request header "x" = "a\\nb" }', 1, 38, "must not contain CR, LF"),
    ('when true { set response header "x" = "\u20ac" }', 1, 39, "beyond Latin-1"),
    ('when true { add upstream header "x" = "1" }', 1, 17, "'request' or 'response'"),
    ('when (true {}', 1, 12, "')' to close the '(' at 1:6"),
    ('when true { reply 200 "a\\qb" }', 1, 25, "unknown escape"),
    ('when method == @ {}', 1, 16, "unexpected character '@'"),
    ('when x. {}', 1, 6, "invalid name"),
])
def test_syntax_errors_have_line_column_and_reason(text, line, col, words):
    e = syntax_error(text)
    assert (e.line, e.column) == (line, col), str(e)
    assert words in e.message, e.message
    # The rendering: "line:col: message", the source line, a caret under the column.
    first, src, caret = str(e).split("\n")
    assert first == f"{line}:{col}: {e.message}"
    assert src.strip() == text.split("\n")[line - 1].strip()
    assert caret.index("^") - 4 == col - 1


def test_caret_keeps_tabs_aligned():
    e = syntax_error("when\ttrue {\n\t\troute 5\n}")
    assert (e.line, e.column) == (2, 9)
    assert str(e).split("\n")[2] == "    \t\t      ^"


def test_nesting_is_bounded():
    ok = "when " + "(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH + " {}"
    assert len(parse(ok).rules) == 1
    e = syntax_error("when " + "(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1) + " {}")
    assert "nested more than" in e.message
    e = syntax_error("when " + "not " * (MAX_DEPTH + 1) + "true {}")
    assert "nested more than" in e.message


def test_size_is_bounded():
    e = syntax_error("#" * (MAX_SOURCE_CHARS + 1))
    assert "limit" in e.message and (e.line, e.column) == (1, 1)


def test_rules_must_be_text():
    with pytest.raises(TypeError, match="must be a string"):
        parse(["when true {}"])  # type: ignore[arg-type]


def test_static_costs():
    p = compile_rules("""
        when method == "GET" and (path prefix "/a" or not host == "h") { stop }
        when source.ip in [10.0.0.0/8, 11.0.0.0/8, 12.0.0.0/8] { route "a"; route "b" }
    """, step_budget=50)
    assert [r.cost for r in p.rules] == [3, 3]
    assert p.max_steps == 3 + 1 + 3 + 2
    assert p.routes[0][0] == "a" and p.routes[1][0] == "b"
    assert p.budget == 50 and not p.has_response_actions
    assert compile_rules('when true { remove response header "x" }').has_response_actions


def test_a_huge_rule_set_compiles_and_counts_its_worst_case():
    text = "\n".join(f'when header("x-{i}") == "{i}" {{ set request header "y" = "{i}" }}'
                     for i in range(5000))
    p = compile_rules(text)
    assert len(p.rules) == 5000 and p.max_steps == 10000


_PIECES = st.sampled_from([
    "when", "true", "false", "and", "or", "not", "(", ")", "{", "}", "[", "]", ",", ";",
    "==", "!=", "~", "+", "=", "in", "prefix", "exists", "method", "path", "source.ip",
    'header("x")', 'jwt.claim("a.b")', 'query("q")', '"s"', '"(a"', '"unterminated',
    "10.0.0.0/8", "403", "set", "request", "response", "header", '"x-a"', "route", '"c"',
    "reply", "stop", "ratelimit_key", "\n", " ", "\t", "#c\n", "@", "\u00e9", "\\",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40).map(" ".join))
def test_any_text_parses_or_fails_with_a_located_syntax_error(text):
    try:
        compile_rules(text)
    except DslSyntaxError as e:
        lines = text.split("\n")
        assert 1 <= e.line <= len(lines)
        assert 1 <= e.column <= len(lines[e.line - 1]) + 1
        assert e.message
