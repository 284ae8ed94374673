"""`FrozenDict`: the hashable, deeply immutable mapping used for free-form config data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class FrozenDict(Mapping[str, Any]):
    """Read-only mapping that freezes its values deeply (mappings -> FrozenDict, lists -> tuples).

    Unlike `types.MappingProxyType` it is hashable, so dataclasses holding it stay hashable.
    It compares equal to any mapping with the same items, including a plain dict.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any):
        self._data = {key: freeze(value) for key, value in dict(data, **kwargs).items()}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __reduce__(self):
        # Rebuild through __init__; the slots carry no state worth pickling besides the data.
        return (FrozenDict, (self._data,))

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable deep copy: FrozenDict -> dict, tuples -> lists."""
        return {key: thaw(value) for key, value in self._data.items()}


def freeze(value: Any) -> Any:
    """Deeply immutable copy of plain data: mappings -> FrozenDict, lists and tuples -> tuples."""
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """Inverse of `freeze`: plain dicts and lists, ready for JSON or YAML encoders."""
    if isinstance(value, FrozenDict):
        return value.to_dict()
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value
