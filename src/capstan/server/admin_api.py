"""Capstan's native admin routes, mounted under ``/api/v1``: events, users, tokens, project roles, audit log.

Access: reading events needs ``read`` in the events' project (server admins read everything; events without a
project are visible to every authenticated caller). Users and the audit log are for server admins; project
members are managed by that project's admins. Every caller may list, create and revoke its own tokens.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from capstan.auth.durations import parse_duration
from capstan.auth.policy import Principal, allows, check_role, parse_token_scope
from capstan.errors import InvalidParameterValue
from capstan.events.records import Event
from capstan.server.errors import NAMES_AN_OBJECT
from capstan.server.security import TARGET_KEY, Authenticator, current_principal, request_project, require
from capstan.services import Services

router = APIRouter(tags=["admin"])


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _changed(request: Request) -> None:
    """Users, roles or tokens changed: drop this process's cached lookups so the change applies at once."""
    authenticator: Authenticator = request.app.state.authenticator
    authenticator.invalidate()


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON form of an event."""
    return {"id": event.id, "time": event.time, "kind": event.kind, "object_id": event.object_id,
            "type": event.type, "reason": event.reason, "message": event.message, "project": event.project,
            "data": dict(event.data)}


def _since_ms(text: str | None, now: int) -> int | None:
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.isascii() and text.isdigit():
        if len(text) > 18:  # beyond any real time in ms, and past what the store's 64-bit column holds
            raise InvalidParameterValue(f"since: {text[:30]!r} is not a time in milliseconds (at most 18 digits)")
        return int(text)
    return now - parse_duration(text, field_name="since")


# -- events -------------------------------------------------------------------------------------------------
@router.get("/events")
def list_events(request: Request, kind: str | None = None, object_id: str | None = None,
                project: str | None = None, since_id: int = Query(0, ge=0, lt=2**63),
                limit: int = Query(1000, ge=1, le=10_000)) -> dict[str, Any]:
    """Events in id order after ``since_id``; ``next_since_id`` continues the listing (``--follow``)."""
    if object_id is not None and kind is None:
        raise InvalidParameterValue("kind: required when object_id is given")
    principal = require(request, "read", project) if project is not None else current_principal(request)
    events = _services(request).events.list(kind, object_id, since_id=since_id, limit=limit)
    next_since_id = events[-1].id if events else since_id
    visible = [e for e in events if (project is None or e.project == project) and _may_read(principal, e)]
    return {"events": [event_to_dict(e) for e in visible], "next_since_id": next_since_id}


def _may_read(principal: Principal, event: Event) -> bool:
    return not event.project or allows(principal, "read", event.project)


# -- who am I -----------------------------------------------------------------------------------------------
@router.get("/whoami")
def whoami(request: Request) -> dict[str, Any]:
    """The caller as the server sees it."""
    principal = current_principal(request)
    authenticator: Authenticator = request.app.state.authenticator
    return {"name": principal.name, "is_admin": principal.is_admin, "single_user": principal.single_user,
            "roles": dict(principal.roles), "auth_required": authenticator.auth_required()}


# -- users --------------------------------------------------------------------------------------------------
class UserCreate(BaseModel):
    """Body of ``POST /api/v1/users``."""

    model_config = ConfigDict(strict=True)  # ``{"admin": 0.0}`` is not a boolean

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")  # the store's rule
    admin: bool = False


class UserUpdate(BaseModel):
    """Body of ``PATCH /api/v1/users/{name}``; omitted fields stay as they are."""

    model_config = ConfigDict(strict=True)

    admin: bool | None = None
    disabled: bool | None = None


@router.get("/users")
def list_users(request: Request) -> dict[str, Any]:
    """Every user with its roles (server admins)."""
    require(request, "admin", None)
    return {"users": [u.to_dict() for u in _services(request).auth.list_users()]}


@router.post("/users")
def create_user(request: Request, body: UserCreate) -> dict[str, Any]:
    """Create a user (server admins)."""
    require(request, "admin", None, target=f"user/{body.name}")
    user = _services(request).auth.create_user(body.name, admin=body.admin)
    _changed(request)
    return {"user": user.to_dict()}


@router.get("/users/{name}")
def get_user(request: Request, name: str) -> dict[str, Any]:
    """One user (server admins, or the user itself)."""
    principal = current_principal(request)
    if principal.name != name or principal.single_user:
        require(request, "admin", None)
    return {"user": _services(request).auth.get_user(name).to_dict()}


@router.patch("/users/{name}")
def update_user(request: Request, name: str, body: UserUpdate) -> dict[str, Any]:
    """Make a user a server admin or not, disable or re-enable it (server admins)."""
    require(request, "admin", None, target=f"user/{name}")
    auth = _services(request).auth
    user = auth.get_user(name)
    if body.admin is not None:
        user = auth.set_admin(name, body.admin)
    if body.disabled is not None:
        user = auth.set_disabled(name, body.disabled)
    _changed(request)
    return {"user": user.to_dict()}


# -- project roles ------------------------------------------------------------------------------------------
class RoleGrant(BaseModel):
    """Body of ``PUT /api/v1/projects/{project}/members/{name}``."""

    model_config = ConfigDict(strict=True)

    role: str


@router.get("/projects/{project}/members")
def list_members(request: Request, project: str) -> dict[str, Any]:
    """Users with a role in ``project`` (its admins and server admins)."""
    require(request, "admin", project)
    return {"members": [m.to_dict() for m in _services(request).auth.members(project)]}


@router.put("/projects/{project}/members/{name}")
def grant_role(request: Request, project: str, name: str, body: RoleGrant) -> dict[str, Any]:
    """Give ``name`` a role in ``project`` (its admins and server admins)."""
    require(request, "admin", project, target=f"user/{name}")
    membership = _services(request).auth.grant(name, project, check_role(body.role))
    _changed(request)
    return {"member": membership.to_dict()}


@router.delete("/projects/{project}/members/{name}")
def revoke_role(request: Request, project: str, name: str) -> dict[str, Any]:
    """Take ``name``'s role in ``project`` away (its admins and server admins)."""
    require(request, "admin", project, target=f"user/{name}")
    _services(request).auth.revoke_role(name, project)
    _changed(request)
    return {}


# -- tokens -------------------------------------------------------------------------------------------------
class TokenCreate(BaseModel):
    """Body of ``POST /api/v1/tokens``; ``user`` defaults to the caller, ``expires`` is a duration (``30d``)."""

    model_config = ConfigDict(strict=True)

    user: str | None = None
    name: str = Field("", max_length=256)
    expires: str | None = None
    deployment: str | None = Field(None, max_length=200,
                                   description="Scope the token to this deployment of the request's project: it may "
                                               "then only call /deployments/NAME/... (inference and feedback).")


def _own_user(principal: Principal) -> str:
    if principal.single_user:
        raise InvalidParameterValue("user: the server runs in single-user mode; name the user the token is for")
    return principal.name


@router.get("/tokens", responses=NAMES_AN_OBJECT)
def list_tokens(request: Request, user: str | None = None,
                all_users: bool = Query(False, alias="all")) -> dict[str, Any]:
    """Tokens of ``user`` (default: the caller); server admins may list anyone's, or everyone's with ``all``."""
    principal = current_principal(request)
    if all_users or (user is None and principal.single_user):
        require(request, "admin", None)
        user = None
    elif user is None:
        user = principal.name
    elif user != principal.name:
        require(request, "admin", None)
    services = _services(request)
    now = services.clock()
    return {"tokens": [t.to_dict(now) for t in services.auth.list_tokens(user)]}


@router.post("/tokens", responses=NAMES_AN_OBJECT)
def create_token(request: Request, body: TokenCreate) -> dict[str, Any]:
    """Issue a token; the response holds the secret, which is never shown again."""
    principal = current_principal(request)
    user = body.user or _own_user(principal)
    if user != principal.name or principal.single_user:
        require(request, "admin", None, target=f"user/{user}")
    expires = parse_duration(body.expires, field_name="expires") if body.expires else None
    scope = None
    if body.deployment is not None:
        project = request_project(request)
        scope = str(parse_token_scope(f"deployment:{project}/{body.deployment}", field_name="deployment"))
    services = _services(request)
    issued = services.auth.create_token(user, name=body.name, expires_in_ms=expires, scope=scope)
    _changed(request)
    return {"token": issued.token.to_dict(services.clock()), "secret": issued.secret}


@router.delete("/tokens/{ref}")
def revoke_token(request: Request, ref: str) -> dict[str, Any]:
    """Revoke a token by id or display prefix (server admins, or the token's owner).

    Clients should never put a secret in a URL (``capstan tokens revoke`` sends the prefix). A secret that arrives
    anyway, from an older client, is still honoured, since it has leaked and revoking it is what the caller asked
    for; the audit log and the access log record only its prefix.
    """
    principal = current_principal(request)
    services = _services(request)
    token = services.auth.find_token(ref)
    _state_target(request, f"token/{token.id}")
    if token.user != principal.name or principal.single_user:
        require(request, "admin", None, target=f"token/{token.id}")
    revoked = services.auth.revoke_token(str(token.id))
    _changed(request)
    return {"token": revoked.to_dict(services.clock())}


def _state_target(request: Request, target: str) -> None:
    """Name the audited object (instead of the request path, which may hold a token reference)."""
    request.scope.setdefault("state", {})[TARGET_KEY] = target


# -- audit log ----------------------------------------------------------------------------------------------
@router.get("/audit")
def list_audit(request: Request, user: str | None = None, since: str | None = None, project: str | None = None,
               limit: int = Query(1000, ge=1, le=100_000)) -> dict[str, Any]:
    """The newest audit entries, oldest first. ``since`` is a duration (``1d``) or epoch milliseconds. Server
    admins see everything; a project's admins may read the entries of their project."""
    if project is None:
        require(request, "admin", None)
    else:
        require(request, "admin", project)
    services = _services(request)
    request.app.state.audit_writer.flush()
    entries = services.auth.list_audit(user=user, since=_since_ms(since, services.clock()), project=project,
                                       limit=limit)
    return {"entries": [e.to_dict() for e in entries]}

