"""The RBAC policy and the auth-mode decision. Pure: no I/O, no clock, no environment.

Permissions are ``read``, ``write`` and ``admin``. Roles are granted per project:

========  ==================================================
role      permissions in that project
========  ==================================================
viewer    read
editor    read, write
admin     read, write, admin (incl. managing its members)
========  ==================================================

A server admin holds every permission in every project and is the only one who may act on server-level objects
(``project=None``: users, tokens of other users, the audit log). The single-user principal (a loopback-only server
with no users) is a server admin.

A token may be **scoped to one deployment** (`TokenScope`, written ``deployment:PROJECT/NAME``): it only narrows what
its user may do, to ``read`` in that project on the deployment's inference routes (``/deployments/NAME/...``), and
never grants anything the user does not hold.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from capstan.errors import InvalidParameterValue, PermissionDenied

Permission = Literal["read", "write", "admin"]
Role = Literal["viewer", "editor", "admin"]

PERMISSIONS: tuple[Permission, ...] = ("read", "write", "admin")
ROLES: tuple[Role, ...] = ("viewer", "editor", "admin")
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "editor": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}

SINGLE_USER_NAME = "local"
DEPLOYMENT_ROUTES_PREFIX = "/deployments/"
"""Where a deployment's inference routes live in ``capstan server`` (``/deployments/NAME/...``)."""
_SCOPE_KIND = "deployment:"


@dataclass(frozen=True, slots=True)
class TokenScope:
    """What a deployment-scoped token may reach: the inference routes of ``deployment`` in ``project``."""

    project: str
    deployment: str

    def __str__(self) -> str:
        return f"{_SCOPE_KIND}{self.project}/{self.deployment}"

    def allows_path(self, path: str) -> bool:
        """True when ``path`` is one of the deployment's routes (``/deployments/NAME`` or below it)."""
        own = f"{DEPLOYMENT_ROUTES_PREFIX}{self.deployment}"
        return path == own or path.startswith(own + "/")


def parse_token_scope(text: str, *, field_name: str = "scope") -> TokenScope:
    """``deployment:PROJECT/NAME`` as a `TokenScope`; `InvalidParameterValue` naming ``field_name`` otherwise."""
    body = text.removeprefix(_SCOPE_KIND) if text.startswith(_SCOPE_KIND) else None
    project, _, deployment = (body or "").partition("/")
    if not project or not deployment or "/" in deployment or len(text) > 300:
        raise InvalidParameterValue(f"{field_name}: must be deployment:PROJECT/NAME, got {text!r}")
    return TokenScope(project, deployment)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling.

    Attributes:
        name: the user name (``"local"`` in single-user mode).
        is_admin: a server admin (every permission everywhere).
        single_user: True when the server runs without authentication (loopback only, no users).
        roles: ``(project, role)`` pairs granted to the user.
        scope: set when the caller used a deployment-scoped token: only ``read`` in that project is allowed (and
            the server lets such a caller reach only the deployment's routes).
    """

    name: str
    is_admin: bool = False
    single_user: bool = False
    roles: tuple[tuple[str, str], ...] = ()
    scope: TokenScope | None = None

    def role_in(self, project: str) -> str | None:
        """The role granted in ``project``, or None."""
        for name, role in self.roles:
            if name == project:
                return role
        return None

    def readable_projects(self) -> frozenset[str]:
        """Projects this principal may read (meaningless for admins, who may read every project)."""
        return frozenset(name for name, _role in self.roles)


LOCAL_PRINCIPAL = Principal(SINGLE_USER_NAME, is_admin=True, single_user=True)
"""The principal every request gets in single-user mode."""


def check_role(role: str) -> Role:
    """``role`` if it is a known role; `InvalidParameterValue` naming the field otherwise."""
    if role not in ROLE_PERMISSIONS:
        raise InvalidParameterValue(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]  # checked against the table just above


def check_permission(permission: str) -> Permission:
    """``permission`` if it is a known permission; `InvalidParameterValue` otherwise."""
    if permission not in PERMISSIONS:
        raise InvalidParameterValue(f"permission: must be one of {', '.join(PERMISSIONS)}, got {permission!r}")
    return permission


def allows(principal: Principal, permission: str, project: str | None) -> bool:
    """True when ``principal`` holds ``permission`` in ``project`` (``None``: a server-level object)."""
    check_permission(permission)
    if principal.scope is not None and (permission != "read" or project != principal.scope.project):
        return False
    if principal.is_admin:
        return True
    if project is None:
        return False
    role = principal.role_in(project)
    return role is not None and permission in ROLE_PERMISSIONS.get(role, frozenset())


def authorize(principal: Principal, permission: str, project: str | None) -> None:
    """Raise `PermissionDenied` (403) unless ``principal`` holds ``permission`` in ``project``."""
    if allows(principal, permission, project):
        return
    if principal.scope is not None:
        raise PermissionDenied(f"the token of user {principal.name!r} is scoped to {principal.scope}; it may only "
                               f"read that deployment")
    if project is None:
        raise PermissionDenied(f"user {principal.name!r} is not a server admin")
    role = principal.role_in(project)
    held = f"has role {role!r}" if role else "has no role"
    raise PermissionDenied(f"user {principal.name!r} {held} in project {project!r}; {permission!r} is required")


def is_loopback_host(host: str) -> bool:
    """True when binding ``host`` accepts connections from this machine only.

    ``localhost`` and addresses in 127.0.0.0/8 or ``::1`` are loopback. Wildcards (``0.0.0.0``, ``::``, ``""``),
    other addresses and other host names count as reachable from the network.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def auth_required(*, bind_host: str, users_exist: bool) -> bool:
    """Whether API calls need a credential.

    Secure by default: a server reachable from the network always requires one. A loopback-only server runs in
    single-user mode until the first user is created; from then on it requires credentials too.
    """
    return users_exist or not is_loopback_host(bind_host)
