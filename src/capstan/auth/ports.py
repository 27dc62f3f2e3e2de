"""The auth store port: users, hashed tokens, per-project roles and the audit log. The SQL adapter is
`capstan.store.auth_sql.SqlAuthStore`; its contract is tested on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from capstan.auth.records import AuditEntry, Credential, IssuedToken, Membership, Token, User


class AuthStore(Protocol):
    """What the server, the CLI and the audit writer need of the auth store."""

    def users_exist(self) -> bool:
        """True once any user has been created (which switches a loopback server out of single-user mode)."""
        ...

    def create_user(self, name: str, *, admin: bool = False) -> User:
        """Create a user; `ResourceAlreadyExists` when the name is taken."""
        ...

    def get_user(self, name: str) -> User:
        """The user called ``name`` with its project roles; `ResourceDoesNotExist` when unknown."""
        ...

    def list_users(self) -> tuple[User, ...]:
        """Every user, by name."""
        ...

    def set_admin(self, name: str, admin: bool) -> User:
        """Make ``name`` a server admin or take that away."""
        ...

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (every token of the user stops working) or re-enable a user."""
        ...

    def grant(self, name: str, project: str, role: str) -> Membership:
        """Give ``name`` ``role`` in ``project`` (replacing an earlier role there); the project is created on
        demand."""
        ...

    def revoke_role(self, name: str, project: str) -> None:
        """Remove ``name``'s role in ``project``; `ResourceDoesNotExist` when it had none."""
        ...

    def members(self, project: str) -> tuple[Membership, ...]:
        """Users with a role in ``project``, by name."""
        ...

    def create_token(self, user: str, *, name: str = "", expires_in_ms: int | None = None,
                     scope: str | None = None) -> IssuedToken:
        """Issue a token for ``user``; the returned secret is not stored and cannot be shown again. ``scope``
        (``deployment:PROJECT/NAME``) narrows the token to that deployment's inference routes."""
        ...

    def list_tokens(self, user: str | None = None) -> tuple[Token, ...]:
        """Tokens (of ``user`` when given), oldest first."""
        ...

    def find_token(self, ref: str) -> Token:
        """The token named by its numeric id, its display prefix (or a unique start of it) or the full secret."""
        ...

    def revoke_token(self, ref: str) -> Token:
        """Revoke a token (see `find_token` for ``ref``); revoking twice keeps the first revocation time."""
        ...

    def credential(self, secret: str) -> Credential | None:
        """What the presented secret resolves to (None when no token has that hash), with the user's roles."""
        ...

    def touch_token(self, token_id: int) -> None:
        """Record that a token was used (callers throttle this to about once a minute)."""
        ...

    def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append audit entries in one transaction."""
        ...

    def list_audit(self, *, user: str | None = None, since: int | None = None, project: str | None = None,
                   limit: int = 1000) -> tuple[AuditEntry, ...]:
        """The newest ``limit`` matching entries, returned oldest first."""
        ...
