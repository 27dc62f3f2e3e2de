"""Following objects of a few kinds in one namespace: list, then watch from the listing's resourceVersion, and list
again when the watch expires (410 Gone) or the connection drops. A `Watcher` keeps the latest document of every
object it saw and tells its ``on_change`` callback about each change, from one daemon thread per kind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capstan.errors import CapstanError
from capstan.k8s.client import KubeApi, Ref, WatchExpired

__all__ = ["Changed", "Relisted", "Watcher", "name_of"]

Changed = Callable[[Ref, str, dict[str, Any]], None]
"""Told ``(kind, event type, object)`` for each ``ADDED``/``MODIFIED``/``DELETED`` (``LISTED`` after a relist)."""
Relisted = Callable[[Ref, str], None]
"""Told ``(kind, why)`` when a watch had to start over from a fresh list."""


def name_of(doc: Mapping[str, Any]) -> str:
    """``metadata.name``."""
    return str((doc.get("metadata") or {}).get("name", ""))


def _version(doc: Mapping[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("resourceVersion", ""))


class Watcher:
    """Lists and watches ``refs`` in ``namespace`` (objects with ``labels``), resuming from the last
    resourceVersion seen; ``timeout_s`` is each watch request's server-side timeout, ``retry_s`` the pause after
    a failed request (the cluster may be briefly unreachable)."""

    def __init__(self, api: KubeApi, refs: Sequence[Ref], *, namespace: str, labels: Mapping[str, str],
                 on_change: Changed, on_relist: Relisted | None = None, timeout_s: int = 30,
                 retry_s: float = 1.0) -> None:
        self._api = api
        self._refs = tuple(refs)
        self._namespace = namespace
        self._labels = dict(labels)
        self._on_change = on_change
        self._on_relist = on_relist
        self._timeout = timeout_s
        self._retry = retry_s
        self._lock = threading.Lock()
        self._objects: dict[Ref, dict[str, dict[str, Any]]] = {r: {} for r in self._refs}
        self._synced = {r: threading.Event() for r in self._refs}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.relists = 0
        """How many times a watch started over from a list (expiry or a dropped connection)."""

    def start(self, *, wait_s: float = 10.0) -> None:
        """Start following; wait up to ``wait_s`` for every kind's first listing."""
        for ref in self._refs:
            thread = threading.Thread(target=self._loop, args=(ref,), name=f"capstan-watch-{ref.plural}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        for event in self._synced.values():
            event.wait(wait_s)

    def stop(self) -> None:
        """Stop after the current watch request ends (the threads are daemons: nothing waits for them)."""
        self._stop.set()

    def objects(self, ref: Ref) -> list[dict[str, Any]]:
        """The latest documents of ``ref`` (a snapshot)."""
        with self._lock:
            return list(self._objects[ref].values())

    def get(self, ref: Ref, name: str) -> dict[str, Any] | None:
        """The latest document of one object, None when it is not (or no longer) there."""
        with self._lock:
            return self._objects[ref].get(name)

    def _loop(self, ref: Ref) -> None:
        version = ""
        failing = False  # report an outage once, not at every retry
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._relist(ref)
                    failing = False
                for event in self._api.watch(ref, version, namespace=self._namespace, labels=self._labels,
                                             timeout_s=self._timeout):
                    if self._stop.is_set():
                        return
                    version = _version(event.object) or version
                    if event.type != "BOOKMARK":
                        self._apply(ref, event.type, event.object)
            except WatchExpired as exc:
                version = ""
                self._relisted(ref, str(exc))
            except CapstanError as exc:
                # Unreachable or refused for a while: list again once it answers (changes may have been missed).
                version = ""
                if not failing:
                    self._relisted(ref, exc.message)
                failing = True
                self._stop.wait(self._retry)

    def _relisted(self, ref: Ref, why: str) -> None:
        self.relists += 1
        if self._on_relist is not None:
            with contextlib.suppress(Exception):
                self._on_relist(ref, why)

    def _relist(self, ref: Ref) -> str:
        listing = self._api.list(ref, namespace=self._namespace, labels=self._labels)
        fresh = {name_of(doc): doc for doc in listing.items}
        with self._lock:
            gone = [doc for name, doc in self._objects[ref].items() if name not in fresh]
            self._objects[ref] = dict(fresh)
        self._synced[ref].set()
        for doc in gone:
            self._notify(ref, "DELETED", doc)
        for doc in fresh.values():
            self._notify(ref, "LISTED", doc)
        return listing.resource_version

    def _apply(self, ref: Ref, kind: str, doc: dict[str, Any]) -> None:
        with self._lock:
            if kind == "DELETED":
                self._objects[ref].pop(name_of(doc), None)
            else:
                self._objects[ref][name_of(doc)] = doc
        self._notify(ref, kind, doc)

    def _notify(self, ref: Ref, kind: str, doc: dict[str, Any]) -> None:
        try:
            self._on_change(ref, kind, doc)
        except Exception:  # one bad callback must not end the watch of every other object
            import logging

            logging.getLogger(__name__).exception("watch callback failed for %s %s", ref.kind, name_of(doc))
