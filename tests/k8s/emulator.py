"""An in-memory Kubernetes API server for the executor tests: an EMULATOR, not a cluster.

It is a real HTTP server on a loopback port that the real lightkube client reaches through a generated kubeconfig,
and it speaks the parts of the API Capstan uses: create (POST), get, list with label selectors and a collection
resourceVersion, watch from a resourceVersion (chunked, newline-delimited events; a version older than the last
`expire_history` gets the 410 ``Expired`` ERROR event a real server sends), JSON merge patch, server-side apply
(``application/apply-patch+yaml`` with ``fieldManager``/``force`` and field-ownership conflicts answered 409),
delete with ``propagationPolicy`` (a Job's pods go with it unless ``Orphan``), and pod logs (``follow`` streams
until the pod ends). Every object created or applied is VALIDATED strictly with `capstan.k8s.validate` (official
schemas and the CRDs given) and refused with a 422 ``Invalid`` Status naming the fields, as the API server does.

There is no scheduler, kubelet or controller: the tests play them (`add_pod`, `set_status`, `append_log`). API
groups listed in ``missing_groups`` answer 404, like a cluster without that CRD (Kueue by default).
"""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from capstan.k8s.crds import CrdSet
from capstan.k8s.validate import check_documents

_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
_CLUSTER_PLURALS = {"namespaces", "nodes", "clusterroles", "clusterrolebindings", "clusterqueues",
                    "resourceflavors", "cohorts", "workloadpriorityclasses", "admissionchecks",
                    "provisioningrequestconfigs", "priorityclasses", "storageclasses", "persistentvolumes"}


@dataclass
class _Stored:
    doc: dict[str, Any]
    plural: str
    owners: dict[str, str] = field(default_factory=dict)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flat ``.a.b`` paths to leaf values (lists are leaves, as atomic lists are for apply)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_leaves(sub, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _matches(doc: Mapping[str, Any], selector: str) -> bool:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


def _status(code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None,
            name: str = "", kind: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "code": code}
    if causes is not None or name:
        out["details"] = {"name": name, "kind": kind, "causes": causes or []}
    return out


class ApiEmulator:
    """The emulated API server (see the module docstring). ``crds``: the CRDs created objects are checked
    against; ``missing_groups``: API groups that are not installed."""

    def __init__(self, *, crds: CrdSet | None = None, missing_groups: tuple[str, ...] = ("kueue.x-k8s.io",),
                 namespace: str = "capstan-test") -> None:
        self.crds = crds if crds is not None else CrdSet()
        self.missing_groups = set(missing_groups)
        self.namespace = namespace
        self._objects: dict[tuple[str, str, str], _Stored] = {}
        self._history: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self._version = 100
        self._oldest = 0
        self._epoch = 0
        self._logs: dict[tuple[str, str], bytearray] = {}
        self._cond = threading.Condition()
        self.deletions: list[tuple[str, str, str]] = []
        """``(plural, name, propagationPolicy)`` of every delete request."""
        self.requests: list[tuple[str, str, str]] = []
        """``(method, path, content type)`` of every request."""
        self.field_managers: list[str] = []
        """The ``fieldManager`` of every write (create, patch, apply)."""
        self.expired_watches = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="k8s-emulator", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ApiEmulator:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (open watches end)."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, folder: Path, *, context: str = "emulator") -> Path:
        """Write a kubeconfig whose ``context`` (the current one) points at this server."""
        path = folder / "kubeconfig"
        config = {"apiVersion": "v1", "kind": "Config", "current-context": context,
                  "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                  "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
                  "contexts": [{"name": context, "context": {"cluster": "emulator", "user": "emulator",
                                                             "namespace": self.namespace}}]}
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    # -- what the tests play (scheduler, kubelet, controllers) ------------------------------------------------
    def put(self, doc: Mapping[str, Any], plural: str, *, validate: bool = True) -> dict[str, Any]:
        """Store ``doc`` as if created (no validation with ``validate=False``, e.g. a Node)."""
        body = copy.deepcopy(dict(doc))
        if validate:
            problem = self._invalid(body)
            if problem is not None:
                raise AssertionError(problem["message"])
        with self._cond:
            return self._store(plural, body, "test")

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object, or None."""
        ns = "" if plural in _CLUSTER_PLURALS else (namespace or self.namespace)
        with self._cond:
            found = self._objects.get((plural, ns, name))
            return copy.deepcopy(found.doc) if found else None

    def objects(self, plural: str) -> list[dict[str, Any]]:
        """Every stored object of ``plural``."""
        with self._cond:
            return [copy.deepcopy(s.doc) for (p, _, _), s in self._objects.items() if p == plural]

    def set_status(self, plural: str, name: str, status: Mapping[str, Any], namespace: str | None = None) -> None:
        """Replace an object's ``status`` (as its controller would), a MODIFIED event."""
        ns = "" if plural in _CLUSTER_PLURALS else (namespace or self.namespace)
        with self._cond:
            stored = self._objects[(plural, ns, name)]
            stored.doc["status"] = copy.deepcopy(dict(status))
            self._bump(stored, "MODIFIED")

    def add_pod(self, job: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Create a pod of Job ``job`` from its template (the Job controller's part), with ``status``."""
        with self._cond:
            stored = self._objects[("jobs", self.namespace, job)].doc
        template = copy.deepcopy(stored["spec"]["template"])
        labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": job, "job-name": job}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job,
                                                 "uid": stored["metadata"]["uid"], "controller": True}]},
               "spec": template["spec"]}
        problem = self._invalid(pod)
        assert problem is None, problem
        pod["status"] = copy.deepcopy(dict(status))
        with self._cond:
            return self._store("pods", pod, "kube-controller-manager")

    def append_log(self, pod: str, text: str) -> None:
        """Add to a pod's log (what its container printed)."""
        with self._cond:
            self._logs.setdefault((self.namespace, pod), bytearray()).extend(text.encode())
            self._cond.notify_all()

    def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        """Remove an object at once (pod garbage collection, a node's disappearance)."""
        ns = "" if plural in _CLUSTER_PLURALS else (namespace or self.namespace)
        with self._cond:
            stored = self._objects.pop((plural, ns, name), None)
            if stored is not None:
                self._bump(stored, "DELETED")

    def expire_history(self) -> None:
        """Forget every past event and end the open watches: a watch resumed from an older resourceVersion gets
        410 Gone (as after etcd compaction)."""
        with self._cond:
            self._oldest = self._version
            self._history.clear()
            self._epoch += 1
            self._cond.notify_all()

    def wait_for(self, plural: str, name: str, test: Any = None, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait until the object exists (and ``test(doc)`` holds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            doc = self.get(plural, name)
            if doc is not None and (test is None or test(doc)):
                return doc
            time.sleep(0.02)
        raise AssertionError(f"{plural}/{name} did not appear (or reach the expected state) in {timeout_s}s")

    # -- storage ----------------------------------------------------------------------------------------------
    def _store(self, plural: str, doc: dict[str, Any], manager: str) -> dict[str, Any]:
        meta = doc.setdefault("metadata", {})
        ns = "" if plural in _CLUSTER_PLURALS else (meta.get("namespace") or self.namespace)
        if ns:
            meta["namespace"] = ns
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta.setdefault("generation", 1)
        stored = _Stored(doc, plural, {p: manager for p in _leaves(_spec_part(doc))})
        kind = "MODIFIED" if (plural, ns, meta["name"]) in self._objects else "ADDED"
        self._objects[(plural, ns, meta["name"])] = stored
        self._bump(stored, kind)
        return copy.deepcopy(doc)

    def _bump(self, stored: _Stored, kind: str) -> None:
        self._version += 1
        stored.doc["metadata"]["resourceVersion"] = str(self._version)
        meta = stored.doc["metadata"]
        self._history.append((self._version, stored.plural, meta.get("namespace", ""), kind,
                              copy.deepcopy(stored.doc)))
        self._cond.notify_all()

    def _invalid(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        """The 422 Status for an object that fails strict validation, None when it is valid."""
        clean = copy.deepcopy(dict(doc))
        clean.pop("status", None)
        for key in _SERVER_FIELDS:
            clean.get("metadata", {}).pop(key, None)
        report = check_documents([clean], crds=self.crds)
        if not report.errors:
            return None
        kind = str(doc.get("kind", ""))
        group = str(doc.get("apiVersion", "")).rpartition("/")[0]
        name = str((doc.get("metadata") or {}).get("name", ""))
        causes = [{"reason": "FieldValueInvalid", "message": e.message, "field": e.path} for e in report.errors]
        words = ", ".join(f"{e.path}: {e.message}" if e.path else e.message for e in report.errors)
        label = f"{kind}.{group}" if group else kind
        return _status(422, "Invalid", f'{label} "{name}" is invalid: [{words}]', causes, name, kind)

    # -- HTTP verbs -------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], ctype: str,
               body: Any) -> tuple[int, Any]:
        """One non-streaming request: ``(status code, JSON body)``."""
        route = _route(path)
        if route is None:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")
        group, plural, ns, name, _sub = route
        if group in self.missing_groups:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        ns = "" if plural in _CLUSTER_PLURALS else ns
        with self._cond:
            if method == "POST" and name is None:
                return self._create(plural, ns, body, query.get("fieldManager", "unknown"))
            if method == "GET" and name is None:
                items = [copy.deepcopy(s.doc) for (p, n, _), s in self._objects.items()
                         if p == plural and (not ns or n == ns) and _matches(s.doc, query.get("labelSelector", ""))]
                return 200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._version)},
                             "items": items}
            stored = self._objects.get((plural, ns, name or ""))
            if method == "PATCH" and "apply-patch" in ctype:
                return self._apply(plural, ns, name or "", stored, body, query)
            if stored is None:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found', name=name or "", kind=plural)
            if method == "GET":
                return 200, copy.deepcopy(stored.doc)
            if method == "PATCH":
                return self._patch(stored, body, query.get("fieldManager", "unknown"))
            if method == "DELETE":
                policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy") or "Background"
                return self._delete(plural, ns, name or "", policy)
        return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _create(self, plural: str, ns: str, body: Any, manager: str) -> tuple[int, Any]:
        name = str((body.get("metadata") or {}).get("name", ""))
        if (plural, ns, name) in self._objects:
            return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists', name=name, kind=plural)
        if ns and (body.get("metadata") or {}).get("namespace", ns) != ns:
            return 400, _status(400, "BadRequest", "the namespace of the object does not match the request")
        problem = self._invalid(body)
        if problem is not None:
            return 422, problem
        return 201, self._store(plural, copy.deepcopy(body), manager)

    def _apply(self, plural: str, ns: str, name: str, stored: _Stored | None, body: Any,
               query: Mapping[str, str]) -> tuple[int, Any]:
        manager = query.get("fieldManager", "")
        if not manager:
            return 400, _status(400, "BadRequest", "PATCH with apply requires a fieldManager")
        force = query.get("force") == "true"
        if stored is None:
            problem = self._invalid(body)
            if problem is not None:
                return 422, problem
            return 201, self._store(plural, copy.deepcopy(body), manager)
        current = _leaves(_spec_part(stored.doc))
        wanted = _leaves(_spec_part(body))
        conflicts = sorted(p for p, v in wanted.items() if p in current and current[p] != v
                           and stored.owners.get(p, manager) != manager)
        if conflicts and not force:
            owners = sorted({stored.owners[p] for p in conflicts})
            words = "; ".join(f'conflict with "{o}": {", ".join(p for p in conflicts if stored.owners[p] == o)}'
                              for o in owners)
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{stored.owners[p]}"',
                       "field": p} for p in conflicts]
            return 409, _status(409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): {words}",
                                causes, name, str(body.get("kind", "")))
        merged = _merge(stored.doc, body)
        problem = self._invalid(merged) or _immutable(stored.doc, merged)
        if problem is not None:
            return 422, problem
        stored.doc = merged
        stored.owners.update({p: manager for p in wanted})
        self._bump(stored, "MODIFIED")
        return 200, copy.deepcopy(merged)

    def _patch(self, stored: _Stored, body: Any, manager: str) -> tuple[int, Any]:
        merged = _merge(stored.doc, body)
        problem = self._invalid(merged) or _immutable(stored.doc, merged)
        if problem is not None:
            return 422, problem
        stored.doc = merged
        stored.owners.update({p: manager for p in _leaves(body) if not p.startswith(".status")})
        self._bump(stored, "MODIFIED")
        return 200, copy.deepcopy(merged)

    def _delete(self, plural: str, ns: str, name: str, policy: str) -> tuple[int, Any]:
        self.deletions.append((plural, name, policy))
        stored = self._objects.pop((plural, ns, name))
        if plural == "jobs" and policy != "Orphan":
            for key, pod in list(self._objects.items()):
                owners = (pod.doc.get("metadata") or {}).get("ownerReferences") or []
                if key[0] == "pods" and any(o.get("kind") == "Job" and o.get("name") == name for o in owners):
                    self._objects.pop(key)
                    self._bump(pod, "DELETED")
        self._bump(stored, "DELETED")
        return 200, _status(200, "", "deleted") | {"status": "Success"}

    # -- streams ----------------------------------------------------------------------------------------------
    def watch(self, path: str, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """The events of a watch request, ending at its timeout, at `expire_history` or at `close`."""
        route = _route(path)
        assert route is not None
        _group, plural, ns, _, _ = route
        ns = "" if plural in _CLUSTER_PLURALS else ns
        selector = query.get("labelSelector", "")
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        since = query.get("resourceVersion") or ""
        with self._cond:
            epoch = self._epoch
            if since and since != "0" and int(since) < self._oldest:
                self.expired_watches += 1
                yield {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since} "
                                                                          f"({self._oldest})")}
                return
            if not since or since == "0":
                start = self._version
                backlog = [{"type": "ADDED", "object": copy.deepcopy(s.doc)} for (p, n, _), s in self._objects.items()
                           if p == plural and (not ns or n == ns) and _matches(s.doc, selector)]
            else:
                start, backlog = int(since), []
        yield from backlog
        seen = start
        while True:
            with self._cond:
                if self._epoch != epoch:  # checked before the fresh events: events after the expiry never reach
                    return  # an open watch, so every watch open at `expire_history` ends there and resumes
                fresh = [h for h in self._history if h[0] > seen]
                if not fresh:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(min(left, 0.5))
                    continue
            for version, p, n, kind, doc in fresh:
                seen = version
                if p == plural and (not ns or n == ns) and _matches(doc, selector):
                    yield {"type": kind, "object": doc}

    def log_stream(self, ns: str, pod: str, follow: bool) -> Iterator[bytes] | None:
        """A pod's log (None when the pod does not exist); ``follow`` waits for more until the pod ends."""
        with self._cond:
            if ("pods", ns, pod) not in self._objects:
                return None

        def stream() -> Iterator[bytes]:
            sent = 0
            while True:
                with self._cond:
                    data = bytes(self._logs.get((ns, pod), b""))
                    stored = self._objects.get(("pods", ns, pod))
                    ended = stored is None or (stored.doc.get("status") or {}).get("phase") in ("Succeeded",
                                                                                               "Failed")
                if len(data) > sent:
                    yield data[sent:]
                    sent = len(data)
                if not follow or ended:
                    return
                with self._cond:
                    self._cond.wait(0.2)

        return stream()


def _immutable(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The 422 a real API server answers to a change of a Job's pod template (immutable once created)."""
    if old.get("kind") != "Job" or old["spec"].get("template") == new["spec"].get("template"):
        return None
    name = str(old["metadata"]["name"])
    message = (f'Job.batch "{name}" is invalid: spec.template: Invalid value: ...: field is immutable')
    return _status(422, "Invalid", message, [{"reason": "FieldValueInvalid", "message": "field is immutable",
                                              "field": "spec.template"}], name, "Job")


def _spec_part(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What apply owns: everything but status and the server's metadata."""
    out = {k: copy.deepcopy(v) for k, v in doc.items() if k not in ("status", "apiVersion", "kind")}
    meta = {k: v for k, v in (out.get("metadata") or {}).items() if k not in (*_SERVER_FIELDS, "name", "namespace")}
    out["metadata"] = meta
    return out


def _route(path: str) -> tuple[str, str, str, str | None, str | None] | None:
    """``(group, plural, namespace, name, subresource)`` of an API path."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    ns = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    if not rest:
        return None
    return group, rest[0], ns, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None


def _handler(emulator: ApiEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # the base class's name
            return

        def _query(self) -> tuple[str, dict[str, str]]:
            url = urlparse(self.path)
            return url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}

        def _body(self) -> Any:
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            return json.loads(raw) if raw else None

        def _send(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunks(self, ctype: str, chunks: Iterator[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _serve(self, method: str) -> None:
            path, query = self._query()
            ctype = self.headers.get("Content-Type", "")
            emulator.requests.append((method, path, ctype))
            if method in ("POST", "PATCH", "PUT"):
                emulator.field_managers.append(query.get("fieldManager", ""))
            body = self._body() if method in ("POST", "PATCH", "PUT", "DELETE") else None
            route = _route(path)
            if method == "GET" and query.get("watch") in ("true", "1") and route is not None \
                    and route[0] not in emulator.missing_groups:
                self._chunks("application/json", (json.dumps(e).encode() + b"\n"
                                                  for e in emulator.watch(path, query)))
                return
            if method == "GET" and route is not None and route[4] == "log":
                stream = emulator.log_stream(route[2], route[3] or "", query.get("follow") == "true")
                if stream is None:
                    self._send(404, _status(404, "NotFound", f'pods "{route[3]}" not found'))
                    return
                self._chunks("text/plain", stream)
                return
            code, payload = emulator.handle(method, path, query, ctype, body)
            self._send(code, payload)

        def do_GET(self) -> None:  # http.server's naming
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler


# -- what the tests share -------------------------------------------------------------------------------------------
REAL_CLUSTER_ENV = "CAPSTAN_TEST_KUBECONFIG"
CRDS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "k8s" / "crds"


@dataclass
class Cluster:
    """What a test runs against: the emulator (``emulator`` set) or the real cluster of ``CAPSTAN_TEST_KUBECONFIG``
    (``emulator`` None); ``kubeconfig`` is the file that reaches it."""

    kind: str
    kubeconfig: Path
    emulator: ApiEmulator | None

    def kubelet(self) -> ApiEmulator:
        """The emulator, to play the scheduler, kubelet and controllers; a real cluster skips the test, since
        the flow needs a workload that really does what the emulator makes it do."""
        if self.emulator is None:
            import pytest

            pytest.skip("this flow has the emulator play the kubelet (an OOM kill, a scheduler message); on a real "
                        "cluster it would need a workload that really does it")
        return self.emulator


@functools.cache
def crds() -> CrdSet:
    """The CRDs of ``../shared/k8s/crds`` (an empty set where that folder is missing), read once."""
    from capstan.k8s.crds import load_crds

    return load_crds([CRDS_DIR]) if CRDS_DIR.is_dir() else CrdSet()


def open_cluster(kind: str, folder: Path, *, kueue: bool = False) -> Iterator[Cluster]:
    """A `Cluster` for a fixture: ``emulator`` (Kueue's API installed with ``kueue``), or ``real-cluster``, which
    skips with the reason unless ``CAPSTAN_TEST_KUBECONFIG`` names a kubeconfig."""
    import os

    import pytest

    if kind == "real-cluster":
        path = os.environ.get(REAL_CLUSTER_ENV)
        if not path:
            pytest.skip(f"{REAL_CLUSTER_ENV} is not set: no real cluster to run against (the emulator runs it)")
        yield Cluster(kind, Path(path), None)
        return
    if kueue and not CRDS_DIR.is_dir():
        pytest.skip(f"the Kueue CRDs are not there: {CRDS_DIR} is missing")
    emulator = ApiEmulator(crds=crds(), missing_groups=() if kueue else ("kueue.x-k8s.io",)).start()
    try:
        yield Cluster(kind, emulator.kubeconfig(folder), emulator)
    finally:
        emulator.close()


# Status documents as the kubelet and the Job controller write them.
T0 = "2026-12-07T10:00:00Z"
T1 = "2026-12-07T10:00:05Z"


def running_pod(container: str = "step") -> dict[str, Any]:
    """A pod whose container runs."""
    return {"phase": "Running", "startTime": T0, "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": container, "ready": True, "restartCount": 0, "image": "x",
                                   "imageID": "", "state": {"running": {"startedAt": T0}}}]}


def ended_pod(container: str = "step", *, code: int = 0, reason: str = "Completed") -> dict[str, Any]:
    """A pod whose container exited with ``code`` (``reason``: ``Completed``, ``Error``, ``OOMKilled``)."""
    return {"phase": "Succeeded" if code == 0 else "Failed", "startTime": T0,
            "containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "x",
                                   "imageID": "", "state": {"terminated": {
                                       "exitCode": code, "reason": reason, "startedAt": T0, "finishedAt": T1}}}]}


def unschedulable_pod(message: str) -> dict[str, Any]:
    """A pod the scheduler cannot place, with its message."""
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": message}]}


def job_done(*, failed: str | None = None, message: str = "") -> dict[str, Any]:
    """A Job's status once the controller decided: ``Complete``, or ``Failed`` with reason ``failed``."""
    if failed is None:
        return {"succeeded": 1, "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                               {"type": "Complete", "status": "True"}]}
    return {"failed": 1, "conditions": [{"type": "FailureTarget", "status": "True", "reason": failed,
                                         "message": message},
                                        {"type": "Failed", "status": "True", "reason": failed, "message": message}]}
