"""The pure RBAC policy, the auth-mode decision and duration parsing."""

from __future__ import annotations

import pytest

from capstan.auth.durations import parse_duration
from capstan.auth.policy import (
    LOCAL_PRINCIPAL,
    Principal,
    allows,
    auth_required,
    authorize,
    check_role,
    is_loopback_host,
)
from capstan.errors import InvalidParameterValue, PermissionDenied

VIEWER = Principal("vera", roles=(("p1", "viewer"),))
EDITOR = Principal("ed", roles=(("p1", "editor"), ("p2", "viewer")))
PADMIN = Principal("pat", roles=(("p1", "admin"),))
ADMIN = Principal("root", is_admin=True)
NOBODY = Principal("nobody")


@pytest.mark.parametrize(("principal", "permission", "project", "expected"), [
    (VIEWER, "read", "p1", True),
    (VIEWER, "write", "p1", False),
    (VIEWER, "admin", "p1", False),
    (VIEWER, "read", "p2", False),
    (EDITOR, "read", "p1", True),
    (EDITOR, "write", "p1", True),
    (EDITOR, "admin", "p1", False),
    (EDITOR, "write", "p2", False),
    (EDITOR, "read", "p2", True),
    (EDITOR, "write", "p3", False),
    (PADMIN, "admin", "p1", True),
    (PADMIN, "write", "p1", True),
    (PADMIN, "read", "p2", False),
    (PADMIN, "admin", None, False),
    (EDITOR, "read", None, False),
    (ADMIN, "admin", None, True),
    (ADMIN, "write", "anything", True),
    (NOBODY, "read", "default", False),
    (LOCAL_PRINCIPAL, "admin", None, True),
    (LOCAL_PRINCIPAL, "write", "p9", True),
])
def test_permission_matrix(principal: Principal, permission: str, project: str | None, expected: bool) -> None:
    assert allows(principal, permission, project) is expected
    if expected:
        authorize(principal, permission, project)
    else:
        with pytest.raises(PermissionDenied) as info:
            authorize(principal, permission, project)
        assert principal.name in info.value.message
        assert info.value.http_status == 403


def test_denial_messages_name_the_role_and_project() -> None:
    with pytest.raises(PermissionDenied, match="has role 'viewer' in project 'p1'; 'write' is required"):
        authorize(VIEWER, "write", "p1")
    with pytest.raises(PermissionDenied, match="has no role in project 'p2'"):
        authorize(VIEWER, "read", "p2")
    with pytest.raises(PermissionDenied, match="not a server admin"):
        authorize(EDITOR, "admin", None)


def test_unknown_permission_and_role_are_rejected() -> None:
    with pytest.raises(InvalidParameterValue, match="permission"):
        allows(ADMIN, "delete", "p1")
    with pytest.raises(InvalidParameterValue, match="role: must be one of viewer, editor, admin"):
        check_role("owner")
    assert check_role("editor") == "editor"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("LOCALHOST", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False),
    ("10.0.0.1", False), ("example.com", False), ("my-host", False),
])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_auth_required_decision() -> None:
    assert auth_required(bind_host="127.0.0.1", users_exist=False) is False
    assert auth_required(bind_host="127.0.0.1", users_exist=True) is True
    assert auth_required(bind_host="0.0.0.0", users_exist=False) is True
    assert auth_required(bind_host="0.0.0.0", users_exist=True) is True
    assert auth_required(bind_host="example.com", users_exist=False) is True


def test_principal_roles() -> None:
    assert EDITOR.role_in("p2") == "viewer"
    assert EDITOR.role_in("p3") is None
    assert EDITOR.readable_projects() == {"p1", "p2"}
    assert LOCAL_PRINCIPAL.single_user and LOCAL_PRINCIPAL.name == "local"


@pytest.mark.parametrize(("text", "ms"), [
    ("30d", 30 * 86_400_000), ("12h", 12 * 3_600_000), ("15m", 900_000), ("45s", 45_000), ("2w", 14 * 86_400_000),
    ("1h30m", 5_400_000), (" 1D ", 86_400_000), ("1d 12h", 36 * 3_600_000),
])
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "-1d", "1.5h", "0s", "1h-"])
def test_parse_duration_rejects_bad_input(text: str) -> None:
    with pytest.raises(InvalidParameterValue, match="--expires"):
        parse_duration(text, field_name="--expires")

