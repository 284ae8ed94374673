"""Recursive-descent parser of the rule language (grammar: docs/dsl.md). Everything that
can be checked without a request is checked here, once: header names, regular expressions,
CIDRs, statuses, and where each kind of value may be used."""
from __future__ import annotations

from omnirelay.extensions.dsl import tree as t
from omnirelay.extensions.dsl.lexer import ADDRESS, EOF, NAME, NUMBER, OP, STRING, Source, Token
from omnirelay.extensions.dsl.lexer import tokenize as _tokenize
from omnirelay.extensions.dsl.regex import compile_search
from omnirelay.security.matchers import CidrSet
from omnirelay.security.util import header_name

MAX_SOURCE_CHARS = 1 << 20
# Nesting of parentheses and `not` (the parser recurses once per level).
MAX_DEPTH = 32

# Request values without an argument, and those that take names in parentheses.
PLAIN_FIELDS = ("method", "path", "host", "source.ip", "source.identity")
NAMED_FIELDS = ("header", "query", "jwt.claim")
COMPARE_OPS = ("==", "!=", "prefix", "suffix", "contains")
# Headers whose values frame the message or the connection: the proxy owns them.
PROTECTED_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "upgrade",
                               "te", "keep-alive", "proxy-connection"))


def parse(text: str) -> t.RuleSet:
    """Parse and check a rule text. Raises DslSyntaxError (a ValueError)."""
    if not isinstance(text, str):
        raise TypeError(f"the rules must be a string, got {type(text).__name__}")
    src = Source(text)
    if len(text) > MAX_SOURCE_CHARS:
        raise src.error(f"the rules are {len(text)} characters long; the limit is "
                        f"{MAX_SOURCE_CHARS}", 1, 1)
    return _Parser(src, _tokenize(src)).rule_set()


class _Parser:
    def __init__(self, src: Source, tokens: list[Token]) -> None:
        self.src = src
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    # ---- token helpers

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != EOF:
            self.i += 1
        return tok

    def at(self, kind: str, value: str | None = None) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == kind and (value is None or tok.value == value)

    def at_word(self, word: str) -> bool:
        return self.at(NAME, word)

    def error(self, message: str, tok: Token | None = None):
        tok = tok or self.tok
        return self.src.error(message, tok.line, tok.column)

    def expect(self, kind: str, value: str | None, what: str) -> Token:
        if not self.at(kind, value):
            raise self.error(f"expected {what}, got {self.tok.describe()}")
        return self.advance()

    @staticmethod
    def pos(tok: Token) -> t.Pos:
        return t.Pos(tok.line, tok.column)

    # ---- rules

    def rule_set(self) -> t.RuleSet:
        rules = []
        while not self.at(EOF, None):
            rules.append(self.rule())
        return t.RuleSet(tuple(rules))

    def rule(self) -> t.Rule:
        start = self.tok
        if not self.at_word("when"):
            raise self.error(f"expected a rule ('when <condition> {{ <actions> }}'), "
                             f"got {start.describe()}")
        self.advance()
        cond = self.condition()
        self.expect(OP, "{", "'{' after the condition")
        actions = []
        while not self.at(OP, "}"):
            if self.at(EOF, None):
                raise self.error(f"expected '}}' to close the rule that starts at line "
                                 f"{start.line}, got the end of the rules")
            actions.append(self.action())
            if self.at(OP, ";"):
                self.advance()
        self.advance()
        return t.Rule(cond, tuple(actions), self.pos(start))

    # ---- conditions: or > and > not > test

    def condition(self) -> t.Cond:
        return self.bool_op("or", self.and_cond)

    def and_cond(self) -> t.Cond:
        return self.bool_op("and", self.not_cond)

    def bool_op(self, op: str, operand) -> t.Cond:
        first = self.tok
        items = [operand()]
        while self.at_word(op):
            self.advance()
            items.append(operand())
        return items[0] if len(items) == 1 else t.BoolOp(op, tuple(items), self.pos(first))

    def nested(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"conditions are nested more than {MAX_DEPTH} deep", tok)

    def not_cond(self) -> t.Cond:
        tok = self.tok
        if self.at_word("not"):
            self.advance()
            self.nested(tok)
            operand = self.not_cond()
            self.depth -= 1
            return t.Not(operand, self.pos(tok))
        return self.primary_cond()

    def primary_cond(self) -> t.Cond:
        tok = self.tok
        if self.at(OP, "("):
            self.advance()
            self.nested(tok)
            cond = self.condition()
            self.depth -= 1
            self.expect(OP, ")", "')' to close the '(' at "
                        f"{tok.line}:{tok.column}")
            return cond
        if self.at_word("true") or self.at_word("false"):
            self.advance()
            return t.Const(tok.value == "true", self.pos(tok))
        left = self.value("a condition")
        return self.test(left)

    def test(self, left: t.Value) -> t.Cond:
        tok = self.tok
        pos = self.pos(tok)
        if tok.kind == OP and tok.value in ("==", "!="):
            self.advance()
            return t.Compare(tok.value, left, self.value(f"a value after {tok.value!r}"), pos)
        if tok.kind == NAME and tok.value in ("prefix", "suffix", "contains"):
            self.advance()
            return t.Compare(tok.value, left, self.value(f"a value after {tok.value!r}"), pos)
        if self.at(OP, "~"):
            self.advance()
            pat = self.expect(STRING, None, "a regular expression in double quotes after '~'")
            try:
                search = compile_search(pat.value)
            except ValueError as e:
                raise self.error(f"invalid regular expression {pat.value!r}: {e}",
                                 pat) from None
            return t.Regex(left, pat.value, search, pos)
        if self.at_word("in"):
            self.advance()
            return self.in_test(left, pos)
        if self.at_word("exists"):
            self.advance()
            if not isinstance(left, t.Field):
                raise self.src.error("'exists' applies to one request value (header, query, "
                                     "jwt.claim, source.identity, ...)", left.pos.line,
                                     left.pos.column)
            return t.Exists(left, pos)
        raise self.error(f"expected an operator (==, !=, ~, in, prefix, suffix, contains, "
                         f"exists), got {tok.describe()}")

    def in_test(self, left: t.Value, pos: t.Pos) -> t.Cond:
        cidr = isinstance(left, t.Field) and left.kind == "source.ip"
        if self.at(OP, "["):
            self.advance()
            items: list[Token] = []
            while not self.at(OP, "]"):
                if items:
                    self.expect(OP, ",", "',' or ']' in the list")
                items.append(self.advance())
            self.advance()
        elif cidr and self.tok.kind in (ADDRESS, STRING):
            items = [self.advance()]
        else:
            raise self.error("expected a list after 'in' ([\"a\", \"b\"]"
                             + (", or an address range such as 10.0.0.0/8)" if cidr else ")")
                             + f", got {self.tok.describe()}")
        if cidr:
            nets = []
            for tok in items:
                if tok.kind not in (ADDRESS, STRING):
                    raise self.error(f"expected an address range (10.0.0.0/8 or "
                                     f"\"fd00::/8\"), got {tok.describe()}", tok)
                try:
                    CidrSet((tok.value,), "range")
                except ValueError:
                    raise self.error(f"invalid address range {tok.value!r}", tok) from None
                nets.append(tok.value)
            return t.InCidr(left, CidrSet(tuple(nets), "ranges"), max(1, len(nets)), pos)
        for tok in items:
            if tok.kind != STRING:
                raise self.error(f"list items are strings in double quotes, got "
                                 f"{tok.describe()}", tok)
        return t.InList(left, frozenset(tok.value for tok in items), pos)

    # ---- values

    def value(self, what: str) -> t.Value:
        first = self.tok
        parts = [self.term(what)]
        while self.at(OP, "+"):
            self.advance()
            parts.append(self.term("a value after '+'"))
        if len(parts) == 1:
            return parts[0]
        return t.Concat(tuple(parts), self.pos(first))

    def term(self, what: str) -> t.Literal | t.Field:
        tok = self.tok
        if tok.kind == STRING:
            self.advance()
            return t.Literal(tok.value, self.pos(tok))
        if tok.kind == NAME and tok.value in PLAIN_FIELDS:
            self.advance()
            return t.Field(tok.value, (), self.pos(tok))
        if tok.kind == NAME and tok.value in NAMED_FIELDS:
            self.advance()
            return t.Field(tok.value, self.field_args(tok), self.pos(tok))
        known = ", ".join((*PLAIN_FIELDS, *(f"{f}(...)" for f in NAMED_FIELDS)))
        raise self.error(f"expected {what}: a string in double quotes or a request value "
                         f"({known}), got {tok.describe()}")

    def field_args(self, field: Token) -> tuple[str, ...]:
        self.expect(OP, "(", f"'(' after {field.value}")
        args: list[Token] = []
        while not self.at(OP, ")"):
            if args:
                self.expect(OP, ",", "',' or ')'")
            args.append(self.expect(STRING, None, "a name in double quotes"))
        self.advance()
        if not args:
            raise self.error(f"{field.value}(...) needs a name", field)
        if field.value == "jwt.claim":
            # One argument: a claim name, or a dotted path into nested claims (the compiler
            # resolves it); several: the parts of a path, for names with dots (URLs).
            parts = tuple(a.value for a in args)
            split = args[0].value.split(".") if len(args) == 1 else parts
            if any(not p for p in split):
                raise self.error(f"invalid claim path {'.'.join(parts)!r}", args[0])
            return parts
        if len(args) != 1:
            raise self.error(f"{field.value}(...) takes one name", args[1])
        name = args[0]
        if field.value == "header":
            return (self.header_name(name),)
        if not name.value:
            raise self.error("the query parameter name must not be empty", name)
        return (name.value,)

    def header_name(self, tok: Token) -> str:
        try:
            return header_name(tok.value, "header name")
        except (TypeError, ValueError):
            raise self.error(f"invalid header name {tok.value!r}", tok) from None

    def check_header_value(self, value: t.Value) -> None:
        parts = value.parts if isinstance(value, t.Concat) else (value,)
        for part in parts:
            if isinstance(part, t.Literal) and not _header_safe(part.text):
                raise self.src.error("a header value must not contain CR, LF, NUL or "
                                     "characters beyond Latin-1", part.pos.line,
                                     part.pos.column)

    # ---- actions

    def action(self) -> t.Action:
        tok = self.tok
        pos = self.pos(tok)
        word = tok.value if tok.kind == NAME else ""
        if word in ("set", "add", "remove"):
            self.advance()
            side = self.tok
            if not (self.at_word("request") or self.at_word("response")):
                raise self.error(f"expected 'request' or 'response' after '{word}', "
                                 f"got {side.describe()}")
            self.advance()
            self.expect(NAME, "header", f"'header' after '{word} {side.value}'")
            name_tok = self.expect(STRING, None, "a header name in double quotes")
            name = self.header_name(name_tok)
            if name in PROTECTED_HEADERS:
                raise self.error(f"header {name!r} frames the message or the connection; "
                                 "the proxy manages it", name_tok)
            value = None
            if word != "remove":
                self.expect(OP, "=", "'=' after the header name")
                value = self.value("a header value")
                self.check_header_value(value)
            return t.HeaderAction(side.value, word, name, value, pos)
        if word == "route":
            self.advance()
            name = self.expect(STRING, None, "a cluster name in double quotes after 'route'")
            if not name.value:
                raise self.error("the cluster name must not be empty", name)
            return t.Route(name.value, self.pos(name))
        if word == "reply":
            self.advance()
            status = self.expect(NUMBER, None, "a status code after 'reply'")
            code = int(status.value)
            if not 200 <= code <= 599:
                raise self.error(f"the status of a reply must be from 200 to 599, got {code}",
                                 status)
            body = None
            if not (self.at(OP, ";") or self.at(OP, "}")):
                body = self.value("the reply's body")
            return t.Reply(code, body, pos)
        if word == "ratelimit_key":
            self.advance()
            return t.RateLimitKey(self.value("a key after 'ratelimit_key'"), pos)
        if word == "stop":
            self.advance()
            return t.Stop(pos)
        raise self.error("expected an action (set, add, remove, route, reply, ratelimit_key, "
                         f"stop) or '}}', got {tok.describe()}")


def _header_safe(text: str) -> bool:
    return not any(c in text for c in "\r\n\0") and all(ord(c) < 256 for c in text)
