"""Dry-run diffs between two configs: what a publish would add, remove or change."""

from __future__ import annotations

from dataclasses import dataclass

from omnirelay.config import Config

SECTIONS = ("listeners", "routes", "clusters")
_SINGULAR = {"listeners": "listener", "routes": "route", "clusters": "cluster"}


@dataclass(frozen=True, slots=True)
class SectionDiff:
    section: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    sections: tuple[SectionDiff, ...]
    metadata: tuple[str, ...]  # "version: '1' -> '2'", "epoch: 1 -> 2", "rollout changed"

    @property
    def empty(self) -> bool:
        """Nothing changes but the epoch (which every publish bumps)."""
        return not any(self.sections) and all(m.startswith("epoch:") for m in self.metadata)

    def section(self, name: str) -> SectionDiff:
        for section in self.sections:
            if section.section == name:
                return section
        return SectionDiff(name)

    def lines(self) -> list[str]:
        """One line per change: `+ route api-v2`, `- cluster old`, `~ route api`,
        `metadata.version: '1' -> '2'`."""
        out = [f"metadata.{m}" for m in self.metadata]
        for section in self.sections:
            kind = _SINGULAR[section.section]
            out += [f"+ {kind} {name}" for name in section.added]
            out += [f"- {kind} {name}" for name in section.removed]
            out += [f"~ {kind} {name}" for name in section.changed]
        return out

    def summary(self) -> str:
        if self.empty and not self.metadata:
            return "no changes"
        return "\n".join(self.lines())


def diff_configs(old: Config | None, new: Config) -> ConfigDiff:
    """`new` against `old` (None: nothing published yet, so everything is added)."""
    sections = []
    for name in SECTIONS:
        before = {} if old is None else {e.name: e for e in getattr(old.spec, name)}
        after = {e.name: e for e in getattr(new.spec, name)}
        sections.append(
            SectionDiff(
                name,
                added=tuple(n for n in after if n not in before),
                removed=tuple(n for n in before if n not in after),
                changed=tuple(n for n in after if n in before and before[n] != after[n]),
            )
        )
    metadata = []
    if old is None:
        metadata.append(f"version: (none) -> {new.metadata.version!r}")
        metadata.append(f"epoch: (none) -> {new.metadata.epoch}")
    else:
        for field in ("version", "epoch", "ttl", "author", "created"):
            a, b = getattr(old.metadata, field), getattr(new.metadata, field)
            if a != b:
                metadata.append(f"{field}: {a!r} -> {b!r}")
        if old.rollout != new.rollout:
            metadata.append("rollout changed")
    return ConfigDiff(tuple(sections), tuple(metadata))
