"""A small, total rule language for HTTP requests (docs/dsl.md).

Rules are parsed and compiled once per config load into closures (no ``eval``/``exec``);
the language has no loops or recursion, and each request's evaluation is bounded by a step
budget. Modules:

- ``lexer``, ``parser``, ``tree``: the text to a checked syntax tree (``DslSyntaxError``
  with line, column and an excerpt).
- ``regex``: the ``~`` operator on RE2 (linear-time matching).
- ``compiler``: the tree to a ``Program`` whose ``evaluate(stream)`` returns effects.
- ``filter``: the HTTP filter ``omnirelay.filters.http.dsl`` (registered on import; the
  runtime imports it).
"""
from omnirelay.extensions.dsl.compiler import DEFAULT_STEP_BUDGET, Program, compile_rules
from omnirelay.extensions.dsl.errors import BudgetExceeded, DslEvalError, DslSyntaxError

# The language's version, for /capabilities: raised when rules valid under an older
# version may mean something else or be refused.
LANGUAGE_VERSION = "1"

__all__ = ["DEFAULT_STEP_BUDGET", "LANGUAGE_VERSION", "BudgetExceeded", "DslEvalError",
           "DslSyntaxError", "Program", "compile_rules"]
