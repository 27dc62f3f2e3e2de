"""`SqlAuthStore` on both metadata-store backends: users, hashed tokens, roles, audit log."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from capstan.auth.records import AuditEntry
from capstan.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.settings import Settings
from capstan.store.auth_sql import SqlAuthStore
from capstan.store.engine import create_store_engine
from capstan.store.schema import tokens
from helpers.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend_settings: Settings, clock: FakeClock) -> Iterator[SqlAuthStore]:
    engine = create_store_engine(backend_settings)
    yield SqlAuthStore(engine, clock=clock)
    engine.dispose()


def test_users(store: SqlAuthStore) -> None:
    assert not store.users_exist()
    alice = store.create_user("alice", admin=True)
    assert store.users_exist()
    assert (alice.name, alice.is_admin, alice.disabled) == ("alice", True, False)
    store.create_user("bob")
    with pytest.raises(ResourceAlreadyExists, match="'alice' already exists"):
        store.create_user("alice")
    with pytest.raises(InvalidParameterValue, match="name"):
        store.create_user("bad:name")
    with pytest.raises(InvalidParameterValue, match="name"):
        store.create_user("")
    assert [u.name for u in store.list_users()] == ["alice", "bob"]
    assert store.set_admin("bob", True).is_admin
    assert store.set_disabled("bob", True).disabled
    assert not store.set_disabled("bob", False).disabled
    with pytest.raises(ResourceDoesNotExist, match="'carol'"):
        store.set_admin("carol", True)
    with pytest.raises(ResourceDoesNotExist):
        store.get_user("carol")


def test_roles(store: SqlAuthStore) -> None:
    store.create_user("ed")
    store.grant("ed", "p1", "editor")
    store.grant("ed", "p2", "viewer")
    store.grant("ed", "p1", "admin")  # replaces the earlier role
    assert store.get_user("ed").roles == (("p1", "admin"), ("p2", "viewer"))
    assert [(m.user, m.role) for m in store.members("p1")] == [("ed", "admin")]
    with pytest.raises(InvalidParameterValue, match="role"):
        store.grant("ed", "p1", "owner")
    with pytest.raises(ResourceDoesNotExist):
        store.grant("nobody", "p1", "viewer")
    store.revoke_role("ed", "p2")
    assert store.get_user("ed").roles == (("p1", "admin"),)
    with pytest.raises(ResourceDoesNotExist, match="no role in project 'p2'"):
        store.revoke_role("ed", "p2")
    assert dict(store.list_users()[0].roles) == {"p1": "admin"}


def test_tokens_are_stored_hashed(store: SqlAuthStore, backend_settings: Settings) -> None:
    store.create_user("alice")
    issued = store.create_token("alice", name="laptop")
    assert issued.secret.startswith("cap_") and len(issued.secret) >= 40
    assert issued.token.prefix == issued.secret[:12]
    engine = create_store_engine(backend_settings)
    with engine.connect() as conn:
        row = conn.execute(select(tokens)).one()
    engine.dispose()
    assert row.hash == hashlib.sha256(issued.secret.encode()).hexdigest()
    assert issued.secret not in (row.hash, row.prefix, row.name)
    cred = store.credential(issued.secret)
    assert cred is not None and cred.user == "alice" and cred.expires_at is None
    assert store.credential(issued.secret + "x") is None
    assert store.credential("cap_unknown") is None


def test_token_expiry_listing_and_revocation(store: SqlAuthStore, clock: FakeClock) -> None:
    store.create_user("alice")
    store.create_user("bob")
    first = store.create_token("alice", expires_in_ms=1000)
    second = store.create_token("bob")
    assert first.token.expires_at == clock.now + 1000
    assert [t.user for t in store.list_tokens()] == ["alice", "bob"]
    assert [t.id for t in store.list_tokens("bob")] == [second.token.id]
    assert store.list_tokens("alice")[0].state(clock.now) == "active"
    assert store.list_tokens("alice")[0].state(clock.now + 1000) == "expired"
    with pytest.raises(InvalidParameterValue, match="expires"):
        store.create_token("alice", expires_in_ms=0)
    with pytest.raises(ResourceDoesNotExist):
        store.create_token("carol")

    # by id, by prefix, by full secret
    assert store.find_token(str(first.token.id)).id == first.token.id
    assert store.find_token(second.token.prefix).id == second.token.id
    assert store.find_token(second.secret).id == second.token.id
    with pytest.raises(ResourceDoesNotExist):
        store.find_token("999")
    with pytest.raises(InvalidParameterValue, match="neither a token id nor a token prefix"):
        store.find_token("garbage")

    clock.now += 5
    revoked = store.revoke_token(second.token.prefix)
    assert revoked.revoked_at == clock.now and revoked.state(clock.now) == "revoked"
    clock.now += 5
    assert store.revoke_token(str(second.token.id)).revoked_at == clock.now - 5  # idempotent
    cred = store.credential(second.secret)
    assert cred is not None and cred.revoked_at is not None


def test_ambiguous_prefix(store: SqlAuthStore, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = iter(["cap_AAAA1111" + "x" * 30, "cap_AAAA2222" + "y" * 30])
    monkeypatch.setattr("capstan.store.auth_sql.generate_secret", lambda: next(secrets))
    store.create_user("alice")
    store.create_token("alice")
    store.create_token("alice")
    with pytest.raises(InvalidParameterValue, match="matches several tokens"):
        store.find_token("cap_AAAA")
    with pytest.raises(InvalidParameterValue):
        store.revoke_token("cap_AAAA")
    assert store.find_token("cap_AAAA2").prefix == "cap_AAAA2222"
    with pytest.raises(InvalidParameterValue, match="neither"):
        store.find_token("cap_")


def test_credential_carries_roles_and_touch(store: SqlAuthStore, clock: FakeClock) -> None:
    store.create_user("ed")
    store.grant("ed", "p1", "editor")
    issued = store.create_token("ed")
    cred = store.credential(issued.secret)
    assert cred is not None and cred.roles == (("p1", "editor"),) and cred.last_used_at is None
    store.touch_token(cred.token_id)
    assert store.list_tokens("ed")[0].last_used_at == clock.now


def test_audit_log(store: SqlAuthStore, clock: FakeClock) -> None:
    base = clock.now
    store.record_audit([
        AuditEntry(base, "alice", "POST /api/v1/users", "user/bob", "", 200, {"client": "127.0.0.1"}),
        AuditEntry(base + 10, "bob", "POST /api/2.0/mlflow/runs/create", "experiment/1", "p1", 403),
        AuditEntry(base + 20, "alice", "DELETE /api/v1/tokens/{ref}", "token/3", "", 200),
    ])
    store.record_audit([])
    assert store.count_audit() == 3
    entries = store.list_audit()
    assert [e.user for e in entries] == ["alice", "bob", "alice"]
    assert entries[0].detail == {"client": "127.0.0.1"} and entries[0].id > 0
    assert [e.target for e in store.list_audit(user="alice")] == ["user/bob", "token/3"]
    assert [e.status for e in store.list_audit(since=base + 10)] == [403, 200]
    assert [e.user for e in store.list_audit(project="p1")] == ["bob"]
    assert [e.target for e in store.list_audit(limit=2)] == ["experiment/1", "token/3"]  # the newest two
    with pytest.raises(InvalidParameterValue):
        store.list_audit(limit=0)
