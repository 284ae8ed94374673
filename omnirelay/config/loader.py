"""`load_config`: read a source, parse it, decode and validate it, all or nothing."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ConfigError, ConfigIssue
from .model import Config
from .schema import decode_document

_PATH_SUFFIXES = (".yaml", ".yml", ".json")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader tuned for config files.

    - Timestamps stay strings: `created: 2024-05-01T12:00:00Z` is text to keep and sign, not a
      datetime that would be re-rendered differently.
    - A repeated key is an error instead of silently keeping the last value.
    """

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(ValueError):
    pass


def load_config(source: str | os.PathLike[str] | bytes | Mapping[str, Any]) -> Config:
    """The validated config from `source`; raises ConfigError listing every problem found.

    `source` is a path (a `Path`, or a one-line str ending in .yaml, .yml or .json), YAML or
    JSON text as str or bytes, or an already-parsed mapping.
    """
    try:
        config, issues = decode_document(read_document(source))
    except RecursionError:
        # Parsers and the decoder recurse per nesting level; hostile input must not crash us.
        raise _source_error("the document is nested too deeply") from None
    if issues:
        raise ConfigError(issues)
    return config


def read_document(source: str | os.PathLike[str] | bytes | Mapping[str, Any]) -> Any:
    """The parsed but unchecked document; raises ConfigError if it cannot be read or parsed."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _names_a_file(source)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _source_error(f"{path}: cannot read config: {exc.strerror or exc}") from None
        return _parse(data, str(path), json_only=path.suffix.lower() == ".json")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>")
    if isinstance(source, str):
        return _parse(source, "<text>")
    raise TypeError(f"unsupported config source of type {type(source).__name__}")


def _names_a_file(text: str) -> bool:
    return "\n" not in text and text.lower().endswith(_PATH_SUFFIXES)


def _parse(data: str | bytes, label: str, *, json_only: bool = False) -> Any:
    # JSON goes through the json module: PyYAML implements YAML 1.1, where some valid JSON is
    # misread (1e-05 becomes a string) or refused (characters such as U+007F).
    if json_only or data.lstrip()[:1] in ("{", b"{"):
        try:
            return json.loads(data, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise _source_error(f"{label}: invalid JSON: {exc}") from None
        except ValueError as exc:
            if json_only:
                raise _source_error(f"{label}: invalid JSON: {exc}") from None
            # Not JSON after all; flow-style YAML also starts with "{".
    try:
        return yaml.load(data, Loader=_YamlLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _source_error(f"{label}: invalid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise _source_error(f"{label}: invalid YAML: {' '.join(str(exc).split())}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {key!r}")
        result[key] = value
    return result


def _source_error(message: str) -> ConfigError:
    return ConfigError([ConfigIssue("", message)])
