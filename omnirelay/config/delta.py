"""Config deltas: an RFC 6902 JSON Patch from one signed document to the next.

Shared by both planes: MeshKit makes a patch once per (base, target) pair and sends it to the
nodes that run the base; a node applies it to the document it runs. The signature is never over
the patch: it stays over the whole target document, so the node re-encodes the patched value
as canonical JSON (`canonical_json`'s encoding) and checks that those bytes have the target's
SHA-256 before it verifies the signature. `make_patch` only returns a patch that reproduces the
target bytes exactly that way.

JSON Patch (the `jsonpatch` package) rather than JSON Merge Patch: a merge patch can change a
list only by replacing it whole, and a config is mostly lists (listeners, routes, clusters).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple

import jsonpatch
import jsonpointer

FORMAT = "json-patch"  # Delta.patch_format
FEATURE = "config_delta/1"  # the Hello capability of nodes that apply deltas

# NACK codes (ErrorDetail.code) of a delta that cannot be applied.
BASE_MISMATCH = "delta_base_mismatch"
PATCH_FAILED = "delta_patch_failed"
HASH_MISMATCH = "delta_hash_mismatch"


class DeltaError(Exception):
    """A delta that does not turn the base into the target; `code` is the NACK code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeltaError(PATCH_FAILED, f"the {what} is not JSON: {exc}") from None
    except RecursionError:
        raise DeltaError(PATCH_FAILED, f"the {what} is nested too deeply") from None


def make_patch(base: bytes, target: bytes) -> bytes | None:
    """The patch (canonical JSON) that turns document `base` into `target`, or None when
    no patch can reproduce `target`'s bytes (it is not canonical JSON, or a side does not
    parse)."""
    try:
        before, after = json.loads(base), json.loads(target)
        operations: list[dict[str, Any]] = []
        _diff("", before, after, operations)
        data = _encode(operations)
        # The node's view: the base, patched and re-encoded, must be the target's bytes.
        if _encode(_apply(before, data)) != target:
            return None
    except (ValueError, TypeError, RecursionError, DeltaError):
        return None
    return data


def _diff(path: str, before: Any, after: Any, operations: list[dict[str, Any]]) -> None:
    """Append the operations turning `before` into `after` (at `path`). Objects are compared
    member by member and lists trimmed of their common start and end with `==` (C speed: a
    10,000-route list with one change costs one pass); only the differing middle of a list is
    left to `jsonpatch.make_patch`, which matches up moved and inserted items. `==` takes
    1 for true; the caller's byte check catches such a patch."""
    if type(before) is dict and type(after) is dict:
        for key in before:
            if key not in after:
                operations.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in after.items():
            if key not in before:
                operations.append({"op": "add", "path": f"{path}/{_escape(key)}",
                                   "value": value})
            elif before[key] != value:
                _diff(f"{path}/{_escape(key)}", before[key], value, operations)
    elif type(before) is list and type(after) is list:
        shorter = min(len(before), len(after))
        start = 0
        while start < shorter and before[start] == after[start]:
            start += 1
        end = 0
        while end < shorter - start and before[-1 - end] == after[-1 - end]:
            end += 1
        old, new = before[start:len(before) - end], after[start:len(after) - end]
        if len(old) == len(new) == 1:
            _diff(f"{path}/{start}", old[0], new[0], operations)
            return
        for operation in jsonpatch.make_patch(old, new).patch:
            operation = dict(operation)
            for field in ("path", "from"):
                if field in operation:
                    operation[field] = _shift(operation[field], path, start)
            operations.append(operation)
    elif before != after or type(before) is not type(after):
        operations.append({"op": "replace", "path": path, "value": after})


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _shift(pointer: str, path: str, offset: int) -> str:
    """`pointer` into a slice of a list starting at `offset`, as a pointer into the list at
    `path`."""
    head, _, rest = pointer[1:].partition("/")
    index = str(int(head) + offset) if head.isdigit() else head
    return f"{path}/{index}" + (f"/{rest}" if rest or pointer.count("/") > 1 else "")


def _encode(value: Any) -> bytes:
    """`canonical_json` of a value parsed from JSON (dicts, lists, str, int, float, bool,
    None only): the same encoding, without its walk that rejects other types, which costs
    five times the encoding itself on a large document."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string is not valid Unicode (lone surrogate): {exc}") from None


def _apply(document: Any, patch: bytes) -> Any:
    operations = _parse(patch, "patch")
    if not isinstance(operations, list):
        raise DeltaError(PATCH_FAILED, "the patch is not a JSON array of operations")
    try:
        return jsonpatch.JsonPatch(operations).apply(document, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError,
            IndexError, TypeError, ValueError) as exc:
        raise DeltaError(PATCH_FAILED, f"the patch does not apply: "
                                       f"{type(exc).__name__}: {exc}") from None


class Patched(NamedTuple):
    document: bytes  # canonical JSON, with the target's SHA-256
    value: Any  # the same document parsed (what json.loads(document) gives)


def apply_patch(base: bytes, patch: bytes, sha256: str) -> Patched:
    """`base` patched by `patch`, checked to have SHA-256 `sha256` as canonical JSON;
    DeltaError (PATCH_FAILED or HASH_MISMATCH) otherwise. The caller checks the base and,
    after this, the signature."""
    try:
        value = _apply(_parse(base, "base document"), patch)
        document = _encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DeltaError(PATCH_FAILED, f"the patched document has no canonical JSON: "
                                       f"{type(exc).__name__}: {exc}") from None
    actual = hashlib.sha256(document).hexdigest()
    if actual != sha256.lower():
        raise DeltaError(HASH_MISMATCH, f"the patched document's SHA-256 is {actual}, but the "
                                        f"delta's target is {sha256}: the patch or the base "
                                        "was altered")
    return Patched(document, value)
