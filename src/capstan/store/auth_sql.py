"""SQL adapter of the auth store: users, hashed tokens, project roles and the audit log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, func, insert, select, update

from capstan.auth.policy import check_role, parse_token_scope
from capstan.auth.records import AuditEntry, Credential, IssuedToken, Membership, Token, User
from capstan.auth.tokens import display_prefix, generate_secret, hash_secret, redact_secrets
from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.names import check_characters
from capstan.store.schema import audit_log, project_members, projects, tokens, users
from capstan.store.sql_helpers import insert_ignore
from capstan.token_format import TOKEN_MARK

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,255}")
TOUCH_INTERVAL_MS = 60_000  # write tokens.last_used_at at most once a minute per token


def _check_user_name(name: str) -> str:
    if not _USER_NAME.fullmatch(name):
        raise InvalidParameterValue(
            f"name: {name!r} is not a valid user name (letters, digits and . _ @ + -, starting with a letter "
            "or digit, at most 256 characters)")
    return name


def _check_project(project: str) -> str:
    if not project or len(project) > 256 or project != project.strip():
        raise InvalidParameterValue(f"project: {project!r} must be 1-256 characters without outer spaces")
    return check_characters(project, "project")


class SqlAuthStore:
    """Users, tokens (stored as sha256 hashes), per-project roles and the audit log in the metadata store."""

    def __init__(self, engine: Engine, *, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._clock = clock

    # -- users --------------------------------------------------------------------------------------
    def users_exist(self) -> bool:
        """True once any user has been created (which switches a loopback server out of single-user mode)."""
        with self._engine.connect() as conn:
            return conn.execute(select(users.c.id).limit(1)).first() is not None

    def create_user(self, name: str, *, admin: bool = False) -> User:
        """Create a user; `ResourceAlreadyExists` when the name is taken."""
        _check_user_name(name)
        now = self._clock()
        with self._engine.begin() as conn:
            if conn.execute(select(users.c.id).where(users.c.name == name)).first() is not None:
                raise ResourceAlreadyExists(f"user {name!r} already exists")
            conn.execute(insert(users).values(name=name, is_admin=admin, disabled=False, created_at=now))
        return self.get_user(name)

    def get_user(self, name: str) -> User:
        """The user called ``name`` with its project roles; `ResourceDoesNotExist` when unknown."""
        with self._engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
            if row is None:
                raise ResourceDoesNotExist(f"user {name!r} does not exist")
            return User(row.id, row.name, bool(row.is_admin), bool(row.disabled), row.created_at,
                        self._roles(conn, row.id))

    def list_users(self) -> tuple[User, ...]:
        """Every user, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.name)).all()
            roles: dict[int, list[tuple[str, str]]] = {}
            for user_id, project, role in conn.execute(
                    select(project_members.c.user_id, projects.c.name, project_members.c.role)
                    .join(projects, projects.c.id == project_members.c.project_id)
                    .order_by(projects.c.name)):
                roles.setdefault(user_id, []).append((project, role))
        return tuple(User(r.id, r.name, bool(r.is_admin), bool(r.disabled), r.created_at,
                          tuple(roles.get(r.id, ()))) for r in rows)

    def set_admin(self, name: str, admin: bool) -> User:
        """Make ``name`` a server admin or take that away."""
        self._update_user(name, is_admin=admin)
        return self.get_user(name)

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (every token of the user stops working) or re-enable a user."""
        self._update_user(name, disabled=disabled)
        return self.get_user(name)

    def _update_user(self, name: str, **values: object) -> None:
        with self._engine.begin() as conn:
            result = conn.execute(update(users).where(users.c.name == name).values(**values))
        if not result.rowcount:
            raise ResourceDoesNotExist(f"user {name!r} does not exist")

    # -- project roles -----------------------------------------------------------------------------
    def grant(self, name: str, project: str, role: str) -> Membership:
        """Give ``name`` ``role`` in ``project`` (replacing an earlier role there); the project is created on
        demand."""
        check_role(role)
        _check_project(project)
        with self._engine.begin() as conn:
            user_id = self._user_id(conn, name)
            project_id = self._ensure_project(conn, project)
            done = conn.execute(update(project_members)
                                .where(project_members.c.project_id == project_id,
                                       project_members.c.user_id == user_id)
                                .values(role=role)).rowcount
            if not done:
                conn.execute(insert(project_members).values(project_id=project_id, user_id=user_id, role=role))
        return Membership(project, name, role)

    def revoke_role(self, name: str, project: str) -> None:
        """Remove ``name``'s role in ``project``; `ResourceDoesNotExist` when it had none."""
        with self._engine.begin() as conn:
            user_id = self._user_id(conn, name)
            project_id = conn.execute(select(projects.c.id).where(projects.c.name == project)).scalar()
            removed = 0
            if project_id is not None:
                removed = conn.execute(project_members.delete().where(
                    project_members.c.project_id == project_id, project_members.c.user_id == user_id)).rowcount
        if not removed:
            raise ResourceDoesNotExist(f"user {name!r} has no role in project {project!r}")

    def members(self, project: str) -> tuple[Membership, ...]:
        """Users with a role in ``project``, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(users.c.name, project_members.c.role)
                                .join(project_members, project_members.c.user_id == users.c.id)
                                .join(projects, projects.c.id == project_members.c.project_id)
                                .where(projects.c.name == project).order_by(users.c.name)).all()
        return tuple(Membership(project, name, role) for name, role in rows)

    # -- tokens ---------------------------------------------------------------------------------------
    def create_token(self, user: str, *, name: str = "", expires_in_ms: int | None = None,
                     scope: str | None = None) -> IssuedToken:
        """Issue a token for ``user``; the returned secret is not stored and cannot be shown again. ``scope``
        (``deployment:PROJECT/NAME``) narrows it to one deployment's inference routes."""
        if len(name) > 256:
            raise InvalidParameterValue("name: at most 256 characters")
        if expires_in_ms is not None and expires_in_ms <= 0:
            raise InvalidParameterValue("expires: must be in the future")
        if scope is not None:
            scope = str(parse_token_scope(scope))
        secret = generate_secret()
        now = self._clock()
        expires_at = now + expires_in_ms if expires_in_ms is not None else None
        with self._engine.begin() as conn:
            user_id = self._user_id(conn, user)
            new_id = conn.execute(insert(tokens).values(
                user_id=user_id, name=name, prefix=display_prefix(secret), hash=hash_secret(secret),
                created_at=now, expires_at=expires_at, scope=scope)).inserted_primary_key
        assert new_id is not None
        token = Token(int(new_id[0]), user, name, display_prefix(secret), now, expires_at, None, None, scope)
        return IssuedToken(token, secret)

    def list_tokens(self, user: str | None = None) -> tuple[Token, ...]:
        """Tokens (of ``user`` when given), oldest first."""
        query = (select(tokens, users.c.name.label("user_name")).join(users, users.c.id == tokens.c.user_id)
                 .order_by(tokens.c.id))
        with self._engine.connect() as conn:
            if user is not None:
                query = query.where(tokens.c.user_id == self._user_id(conn, user))
            rows = conn.execute(query).all()
        return tuple(self._token(r) for r in rows)

    def find_token(self, ref: str) -> Token:
        """The token named by its numeric id, its display prefix (or a unique start of it) or the full secret."""
        ref = ref.strip()
        query = select(tokens, users.c.name.label("user_name")).join(users, users.c.id == tokens.c.user_id)
        if ref.isdigit():
            query = query.where(tokens.c.id == int(ref))
        elif ref.startswith(TOKEN_MARK) and len(ref) > len(display_prefix(ref)):
            query = query.where(tokens.c.hash == hash_secret(ref))
        elif ref.startswith(TOKEN_MARK) and len(ref) > len(TOKEN_MARK):
            query = query.where(tokens.c.prefix.startswith(ref, autoescape=True))
        else:
            raise InvalidParameterValue(
                f"token: {redact_secrets(ref)!r} is neither a token id nor a token prefix such as cap_1a2B3c4D")
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(2)).all()
        shown = redact_secrets(ref)  # an error message must not echo a secret back (it ends up in logs)
        if not rows:
            raise ResourceDoesNotExist(f"token {shown!r} does not exist")
        if len(rows) > 1:
            raise InvalidParameterValue(f"token: prefix {shown!r} matches several tokens; use the token id")
        return self._token(rows[0])

    def revoke_token(self, ref: str) -> Token:
        """Revoke a token (see `find_token` for ``ref``); revoking twice keeps the first revocation time."""
        token = self.find_token(ref)
        if token.revoked_at is None:
            with self._engine.begin() as conn:
                conn.execute(update(tokens).where(tokens.c.id == token.id, tokens.c.revoked_at.is_(None))
                             .values(revoked_at=self._clock()))
        return self.find_token(str(token.id))

    def credential(self, secret: str) -> Credential | None:
        """What the presented secret resolves to (None when no token has that hash), with the user's roles."""
        query = (select(tokens.c.id, tokens.c.expires_at, tokens.c.revoked_at, tokens.c.last_used_at, tokens.c.scope,
                        users.c.id.label("user_id"), users.c.name, users.c.is_admin, users.c.disabled)
                 .join(users, users.c.id == tokens.c.user_id).where(tokens.c.hash == hash_secret(secret)))
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            roles = self._roles(conn, row.user_id)
        return Credential(row.id, row.name, bool(row.is_admin), bool(row.disabled), row.expires_at,
                          row.revoked_at, row.last_used_at, roles, row.scope)

    def touch_token(self, token_id: int) -> None:
        """Record that a token was used (callers throttle this to about once a minute)."""
        with self._engine.begin() as conn:
            conn.execute(update(tokens).where(tokens.c.id == token_id).values(last_used_at=self._clock()))

    # -- audit log ------------------------------------------------------------------------------------
    def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append audit entries in one transaction."""
        if not entries:
            return
        rows = [{"time": e.time, "user": e.user[:256], "action": e.action[:256], "target": e.target,
                 "project": e.project[:256], "status": e.status,
                 "detail": orjson.dumps(dict(e.detail), default=str).decode()} for e in entries]
        with self._engine.begin() as conn:
            conn.execute(insert(audit_log), rows)

    def list_audit(self, *, user: str | None = None, since: int | None = None, project: str | None = None,
                   limit: int = 1000) -> tuple[AuditEntry, ...]:
        """The newest ``limit`` matching entries, returned oldest first."""
        if limit <= 0:
            raise InvalidParameterValue("limit: must be positive")
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if user is not None:
            query = query.where(audit_log.c.user == user)
        if since is not None:
            query = query.where(audit_log.c.time >= since)
        if project is not None:
            query = query.where(audit_log.c.project == project)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return tuple(AuditEntry(r.time, r.user, r.action, r.target, r.project, r.status, orjson.loads(r.detail),
                                r.id) for r in reversed(rows))

    def count_audit(self) -> int:
        """Number of audit entries (for tests and diagnostics)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _user_id(conn: Connection, name: str) -> int:
        user_id = conn.execute(select(users.c.id).where(users.c.name == name)).scalar()
        if user_id is None:
            raise ResourceDoesNotExist(f"user {name!r} does not exist")
        return int(user_id)

    def _ensure_project(self, conn: Connection, project: str) -> int:
        insert_ignore(conn, projects, [{"name": project, "description": "", "created_at": self._clock()}])
        return int(conn.execute(select(projects.c.id).where(projects.c.name == project)).scalar_one())

    @staticmethod
    def _roles(conn: Connection, user_id: int) -> tuple[tuple[str, str], ...]:
        rows = conn.execute(select(projects.c.name, project_members.c.role)
                            .join(projects, projects.c.id == project_members.c.project_id)
                            .where(project_members.c.user_id == user_id).order_by(projects.c.name)).all()
        return tuple((name, role) for name, role in rows)

    @staticmethod
    def _token(r: Row[Any]) -> Token:
        return Token(r.id, r.user_name, r.name, r.prefix, r.created_at, r.expires_at, r.revoked_at, r.last_used_at,
                     r.scope)
