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
    try:
        # A Config's fields are plain JSON by construction: only its free-form mappings
        # (filter configs, labels) need the checks.
        plain = (config_to_dict(obj, free_form=_plain_json) if isinstance(obj, Config)
                 else _plain_json(obj))
        text = _dumps(plain)
    except (TypeError, ValueError):
        # Again, slowly, for the error with its path.
        text = _dumps(_checked(config_to_dict(obj) if isinstance(obj, Config) else obj, "$"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string is not valid Unicode (lone surrogate): {exc}") from None


_SCALARS = (str, int, bool, type(None))


def _dumps(plain: Any) -> str:
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _plain_json(value: Any) -> Any:
    """What `_checked` returns, without building paths (the common, valid case); raises
    TypeError / ValueError at the first problem, which `_checked` then locates."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is dict or isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError
            plain[key] = _plain_json(item)
        return plain
    if t is list or t is tuple:
        return [_plain_json(item) for item in value]
    if t is float:
        if not math.isfinite(value):
            raise ValueError
        return value
    return _checked(value, "$")  # subclasses of str/int/float and the rest


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
