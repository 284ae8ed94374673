"""Errors of the rule language: syntax errors (with line, column and an excerpt) found when
a rule text is compiled, and evaluation failures of one request."""
from __future__ import annotations


class DslSyntaxError(ValueError):
    """A rule text the compiler refused. ``str()`` is ``line:column: message`` followed by the
    offending line and a caret under the column (1-based, counted in characters)."""

    def __init__(self, message: str, line: int, column: int, source_line: str = "") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.line}:{self.column}: {self.message}"
        if self.source_line:
            # Keep the source's tabs in the caret's indent so that it lines up.
            indent = "".join(c if c == "\t" else " " for c in self.source_line[:self.column - 1])
            text += f"\n    {self.source_line}\n    {indent}^"
        return text


class DslEvalError(Exception):
    """Evaluating the rules for one request failed (the failure policy applies)."""


class BudgetExceeded(DslEvalError):
    """A request's evaluation needed more steps than the rule set's budget."""

    def __init__(self, budget: int) -> None:
        super().__init__(f"step budget of {budget} exceeded")
        self.budget = budget
