"""Records of the auth store: users, tokens, project memberships and audit-log entries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    """A person or service account that holds tokens."""

    id: int
    name: str
    is_admin: bool
    disabled: bool
    created_at: int
    roles: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form used by the admin API and ``capstan users list --json``."""
        return {"name": self.name, "is_admin": self.is_admin, "disabled": self.disabled,
                "created_at": self.created_at, "roles": {project: role for project, role in self.roles}}


@dataclass(frozen=True, slots=True)
class Token:
    """A token's metadata. The secret itself is never stored, only its sha256 and a short display prefix."""

    id: int
    user: str
    name: str
    prefix: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    last_used_at: int | None
    scope: str | None = None
    """``deployment:PROJECT/NAME`` for a deployment-scoped token, else None (the user's full rights)."""

    def state(self, now: int) -> str:
        """``active``, ``expired`` or ``revoked`` at time ``now`` (ms)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self, now: int) -> dict[str, Any]:
        """JSON form (without any secret)."""
        return {"id": self.id, "user": self.user, "name": self.name, "prefix": self.prefix,
                "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "last_used_at": self.last_used_at, "scope": self.scope, "state": self.state(now)}


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly created token: its metadata and the secret, which is shown this once and never again."""

    token: Token
    secret: str


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's role in a project."""

    project: str
    user: str
    role: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"project": self.project, "user": self.user, "role": self.role}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit-log row: who did what to which object, in which project, with what outcome."""

    time: int
    user: str
    action: str
    target: str
    project: str
    status: int
    detail: Mapping[str, object] = field(default_factory=dict)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form used by the admin API and ``capstan audit --json``."""
        return {"id": self.id, "time": self.time, "user": self.user, "action": self.action,
                "target": self.target, "project": self.project, "status": self.status,
                "detail": dict(self.detail)}


@dataclass(frozen=True, slots=True)
class Credential:
    """What a valid token resolves to, loaded in one query so that each request needs at most one lookup."""

    token_id: int
    user: str
    is_admin: bool
    disabled: bool
    expires_at: int | None
    revoked_at: int | None
    last_used_at: int | None
    roles: tuple[tuple[str, str], ...] = ()
    scope: str | None = None
