"""The controller's TCP listener for trials in other pods (decision 0745): a trial with the shared key reports and
gets the pruner's verdict; a wrong key, or a peer that never answers the challenge, is dropped without holding up
the others; the key is required, checked, and never handed to the trials; ``CAPSTAN_TRIAL_LISTEN`` is checked."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Mapping
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings
from capstan.tuning.launch import TrialListener
from capstan.tuning.trial import address_of


class Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[int, float, int]] = []
        self.lock = threading.Lock()

    def __call__(self, number: int, value: float, step: int, metrics: Mapping[str, float]) -> bool:
        with self.lock:
            self.reports.append((number, value, step))
        return value < 0.5  # the "pruner": low values stop


def _listener(sink: Sink, key: str) -> TrialListener:
    return TrialListener(sink, listen="127.0.0.1:0", key=key)


def test_a_trial_with_the_key_reports_over_tcp_and_gets_the_verdict() -> None:
    sink, key = Sink(), secrets.token_hex(32)
    listener = _listener(sink, key)
    try:
        assert listener.address.startswith("tcp://127.0.0.1:")
        env = listener.environment(4)
        assert env == {"CAPSTAN_TRIAL_ADDRESS": listener.address, "CAPSTAN_TRIAL_NUMBER": "4"}  # no key
        # a peer that connects and never answers the challenge does not block the next trial
        stuck = socket.create_connection(address_of(listener.address), timeout=5)  # type: ignore[arg-type]  # a (host, port) here
        with Client(address_of(listener.address), authkey=bytes.fromhex(key)) as conn:
            conn.send(("hello", 4))
            conn.send(("report", 4, 0.9, 0, {}))
            assert conn.recv() == ("prune", False)
            conn.send(("report", 4, 0.1, 1, {}))
            assert conn.recv() == ("prune", True)
        stuck.close()
        assert sink.reports == [(4, 0.9, 0), (4, 0.1, 1)]
    finally:
        listener.close()


def test_a_wrong_key_is_refused() -> None:
    sink = Sink()
    listener = _listener(sink, secrets.token_hex(16))
    try:
        wrong = bytes.fromhex(secrets.token_hex(16))
        with pytest.raises((AuthenticationError, EOFError, ConnectionError)), \
                Client(address_of(listener.address), authkey=wrong) as conn:
            conn.send(("report", 0, 1.0, 0, {}))
            conn.recv()
        assert sink.reports == []
    finally:
        listener.close()


@pytest.mark.parametrize(("key", "message"), [
    (None, "CAPSTAN_TRIAL_KEY: a controller listening on TCP"),
    ("not-hex", "CAPSTAN_TRIAL_KEY: not a hex string"),
    ("abcd", "CAPSTAN_TRIAL_KEY: 2 bytes; at least 16"),
])
def test_the_key_is_required_and_checked(key: str | None, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        TrialListener(Sink(), listen="127.0.0.1:0", key=key)


def test_the_local_listener_still_hands_out_its_own_key() -> None:
    listener = TrialListener(Sink())
    try:
        env = listener.environment(0)
        assert not env["CAPSTAN_TRIAL_ADDRESS"].startswith("tcp://") and len(env["CAPSTAN_TRIAL_KEY"]) == 32
    finally:
        listener.close()


def test_trial_listen_and_addresses_are_checked() -> None:
    settings = Settings.from_env({"CAPSTAN_HOME": "/tmp/capstan-x", "CAPSTAN_KUBE_ADMISSION": "none",
                                  "CAPSTAN_TRIAL_LISTEN": " s-controller.ns.svc:7077 "})
    assert (settings.trial_listen, settings.kube_admission) == ("s-controller.ns.svc:7077", "none")
    for bad in ("7077", "host:", "host:99999", ":7077", "a b:1"):
        with pytest.raises(InvalidParameterValue, match=r"CAPSTAN_TRIAL_LISTEN: .* is not HOST:PORT"):
            Settings.from_env({"CAPSTAN_HOME": "/tmp/capstan-x", "CAPSTAN_TRIAL_LISTEN": bad})
    assert address_of("tcp://ctl.ns.svc:7077") == ("ctl.ns.svc", 7077)
    assert address_of("/tmp/pymp-1/listener-2") == "/tmp/pymp-1/listener-2"
    with pytest.raises(ValueError, match="is not tcp://HOST:PORT"):
        address_of("tcp://nohost")
