"""Endpoint lists that arrive outside a config document: discovery files and API pushes.

They are checked by the same decoder as `spec.clusters[i].endpoints`, so a list is accepted
here exactly when it would be accepted there, with the same messages; issue paths start at
the `source` label instead (`eps.yaml[3].port: ...`). An empty list is valid: a cluster with
`discovery` may have no endpoints (it answers 503 until some arrive).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, ConfigIssue
from .loader import _parse
from .model import Endpoint
from .schema import _BAD, _Decoder


def decode_endpoints(document: object, source: str) -> tuple[Endpoint, ...]:
    """The endpoints of a parsed list of endpoint mappings; ConfigError listing every issue,
    each located under `source` (`<source>[3].port: ...`)."""
    decoder = _Decoder()
    try:
        endpoints = decoder.list_of(decoder.endpoint)(document, source)
        if endpoints is not _BAD:
            decoder.distinct_endpoints(endpoints, source)
    except RecursionError:
        raise ConfigError([ConfigIssue(source, "the document is nested too deeply")]) from None
    if decoder.issues or endpoints is _BAD:
        raise ConfigError(decoder.issues)
    return endpoints


def parse_endpoints(
    data: str | bytes, source: str, *, json_only: bool = False
) -> tuple[Endpoint, ...]:
    """The endpoints in JSON or YAML text (`json_only`: JSON only, as for a `.json` file);
    ConfigError if it cannot be parsed or holds anything but a valid list of endpoints."""
    try:
        document = _parse(data, source, json_only=json_only)
    except RecursionError:
        issue = ConfigIssue("", f"{source}: the document is nested too deeply")
        raise ConfigError([issue]) from None
    return decode_endpoints(document, source)


def load_endpoints_file(path: str | os.PathLike[str]) -> tuple[Endpoint, ...]:
    """The endpoints listed in a JSON or YAML file (JSON only when it is named `*.json`);
    ConfigError if it cannot be read, parsed or validated."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("", f"{path}: cannot read endpoints: {exc.strerror or exc}")]
        ) from None
    return parse_endpoints(data, str(path), json_only=is_json_path(path))


def is_json_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".json"
