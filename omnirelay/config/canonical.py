"""`canonical_json`: one byte string per document value, the form that gets signed."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .model import Config
from .serialize import config_to_dict


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys, no whitespace and non-ASCII left unescaped.

    `obj` is JSON-compatible data (mappings, including FrozenDict, lists or tuples, str, int,
    float, bool, None) or a `Config`, which is encoded as `config_to_dict(obj)`. Anything with
    two plausible encodings or none is refused: TypeError for non-string keys and other types,
    ValueError for NaN, infinities and lone surrogates.
    """
    if isinstance(obj, Config):
        obj = config_to_dict(obj)
    text = json.dumps(
        _checked(obj, "$"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string is not valid Unicode (lone surrogate): {exc}") from None


def _checked(value: Any, path: str) -> Any:
    """Plain JSON data for `value`, rejecting what json.dumps would coerce silently."""
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                # json.dumps would turn 1 into "1", colliding with a real "1" key.
                raise TypeError(f"{path}: keys must be strings, got {key!r}")
            plain[key] = _checked(item, f"{path}.{key}")
        return plain
    if isinstance(value, (list, tuple)):
        return [_checked(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: {value!r} has no JSON encoding")
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"{path}: unsupported type {type(value).__name__}")
