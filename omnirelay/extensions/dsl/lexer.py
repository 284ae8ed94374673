"""Tokens of the rule language, with the line and column where each starts."""
from __future__ import annotations

import re
from typing import NamedTuple

from omnirelay.extensions.dsl.errors import DslSyntaxError

# Kinds: NAME (identifiers, dots allowed inside: source.ip), STRING (the unescaped text),
# NUMBER, ADDRESS (a bare IPv4 address or CIDR, or an IPv6 one starting with a digit),
# OP (punctuation and operators), EOF.
NAME, STRING, NUMBER, ADDRESS, OP, EOF = "name", "string", "number", "address", "op", "end"

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


class Token(NamedTuple):
    kind: str
    value: str
    line: int
    column: int

    def describe(self) -> str:
        if self.kind == EOF:
            return "the end of the rules"
        if self.kind == STRING:
            return f"string {self.value!r}"
        return repr(self.value)


class Source:
    """The rule text split in lines, for error excerpts."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")

    def error(self, message: str, line: int, column: int) -> DslSyntaxError:
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return DslSyntaxError(message, line, column, src)


# One alternative per token kind, tried at each position (ours, not user input: plain re).
_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\[^\n])*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<number>[0-9][0-9A-Fa-f.:/]*)
  | (?P<op>==|!=|[~{}()\[\];,=+])
""", re.VERBOSE)
_ESCAPE = re.compile(r"\\(.)")


def tokenize(src: Source) -> list[Token]:
    text = src.text
    out: list[Token] = []
    append = out.append
    match = _TOKEN.match
    i, n = 0, len(text)
    line, line_start = 1, 0
    while i < n:
        m = match(text, i)
        col = i - line_start + 1
        if m is None:
            if text[i] == '"':
                raise src.error("unterminated string (strings end on the line they start)",
                                line, col)
            raise src.error(f"unexpected character {text[i]!r}", line, col)
        kind = m.lastgroup
        value = m.group()
        i = m.end()
        if kind == "newline":
            line += 1
            line_start = i
        elif kind == "string":
            append(Token(STRING, _unescape(src, value[1:-1], line, col + 1), line, col))
        elif kind == "name":
            if value.endswith(".") or ".." in value:
                raise src.error(f"invalid name {value!r}", line, col)
            append(Token(NAME, value, line, col))
        elif kind == "number":
            append(Token(NUMBER if value.isdigit() else ADDRESS, value, line, col))
        elif kind == "op":
            append(Token(OP, value, line, col))
    append(Token(EOF, "", line, i - line_start + 1))
    return out


def _unescape(src: Source, body: str, line: int, col: int) -> str:
    if "\\" not in body:
        return body

    def one(m: re.Match) -> str:
        c = m.group(1)
        if c not in _ESCAPES:
            raise src.error(f"unknown escape \\{c} in a string (known: \\\" \\\\ \\n \\t)",
                            line, col + m.start())
        return _ESCAPES[c]
    return _ESCAPE.sub(one, body)
