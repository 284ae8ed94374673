"""Bearer tokens for the northbound API, scoped `read` or `mutate` (mutate includes read).

The tokens file holds SHA-256 digests, never tokens:

    {"tokens": [{"name": "ci", "sha256": "<hex>", "permission": "mutate"}, ...]}

`meshkit token add` creates a token, appends its digest and prints the token once. A caller
sends `authorization: Bearer <token>`; its `name` becomes the actor in the audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

READ = "read"
MUTATE = "mutate"
PERMISSIONS = (READ, MUTATE)
TOKEN_PREFIX = "mk_"


class AuthError(Exception):
    def __init__(self, message: str, *, denied: bool = False) -> None:
        super().__init__(message)
        self.denied = denied  # True: known caller without the permission; False: unknown caller


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    permission: str

    def allows(self, permission: str) -> bool:
        return permission == READ or self.permission == MUTATE

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenAuthority:
    def __init__(self, principals: dict[str, Principal] | None = None, *,
                 anonymous: Principal | None = None) -> None:
        self._by_digest = dict(principals or {})
        self._anonymous = anonymous  # `--no-auth`: every caller is this principal

    @classmethod
    def disabled(cls) -> TokenAuthority:
        return cls(anonymous=Principal("anonymous", MUTATE))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenAuthority:
        entries = read_tokens_file(path)
        return cls({e["sha256"]: Principal(e["name"], e["permission"]) for e in entries})

    def authenticate(self, authorization: str | None) -> Principal:
        if self._anonymous is not None:
            return self._anonymous
        if not authorization:
            raise AuthError("missing `authorization: Bearer <token>` metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("authorization metadata must be `Bearer <token>`")
        principal = self._by_digest.get(token_digest(token.strip()))
        if principal is None:
            raise AuthError("unknown bearer token")
        return principal

    def authorize(self, authorization: str | None, permission: str) -> Principal:
        principal = self.authenticate(authorization)
        if not principal.allows(permission):
            raise AuthError(
                f"token {principal.name!r} is {principal.permission}-only; this call needs "
                f"{permission}",
                denied=True,
            )
        return principal


def read_tokens_file(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    path = Path(path)
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read tokens file: {exc}") from None
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(  # noqa: TRY004 - a bad file, reported like every other file problem
            f'{path}: a tokens file is a JSON object {{"tokens": [...]}}'
        )
    names = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"name", "sha256", "permission"}:
            raise ValueError(f"{path}: tokens[{i}] must have exactly name, sha256, permission")
        if entry["permission"] not in PERMISSIONS:
            raise ValueError(f"{path}: tokens[{i}].permission must be read or mutate")
        if entry["name"] in names:
            raise ValueError(f"{path}: tokens[{i}]: duplicate name {entry['name']!r}")
        names.add(entry["name"])
    return entries


def add_token(path: str | os.PathLike[str], name: str, permission: str) -> str:
    """Create a token for `name`, append its digest to the tokens file, return the token."""
    if permission not in PERMISSIONS:
        raise ValueError(f"permission must be one of {PERMISSIONS}")
    entries = read_tokens_file(path)
    if any(e["name"] == name for e in entries):
        raise ValueError(f"{path}: a token named {name!r} exists already")
    token = new_token()
    entries.append({"name": name, "sha256": token_digest(token), "permission": permission})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"tokens": entries}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return token
