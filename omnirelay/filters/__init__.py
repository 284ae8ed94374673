"""The filter API and registry (see docs/embedding.md for writing a filter)."""
from omnirelay.filters.base import CONTINUE, STOP, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.registry import FilterConfigError, build_chain, known_filters, register

__all__ = ["CONTINUE", "STOP", "FilterConfigError", "FilterFactory", "HttpFilter",
           "LocalReply", "build_chain", "known_filters", "register"]
