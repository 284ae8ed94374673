"""Helpers shared by the CLI commands."""
from __future__ import annotations

import click

from omnirelay.config import parse_duration


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def indent(text: str) -> str:
    return "\n".join("  " + line for line in str(text).splitlines())


class Duration(click.ParamType):
    """A duration written as in config files: 10, 2.5, "250ms", "10s", "1m30s"."""

    name = "duration"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(_number_or_text(value))
        except (TypeError, ValueError) as e:
            self.fail(str(e), param, ctx)


def _number_or_text(value: str) -> float | str:
    # On the command line a bare number means seconds, as in the config.
    try:
        return float(value)
    except ValueError:
        return value
