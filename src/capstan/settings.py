"""One typed settings object for the whole package.

`Settings.from_env` is the only place that reads ``CAPSTAN_*`` environment variables; everything else receives a
`Settings` instance as an argument.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from capstan.errors import InvalidParameterValue
from capstan.token_format import TOKEN_MARK, is_token_secret

# Decimal units (k, M, G, T) as in SI and Kubernetes; binary units (Ki, Mi, Gi, Ti) for powers of 1024.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
               "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}


def parse_size(text: str, *, field_name: str = "size", what: str = "size") -> int:
    """Bytes from ``"512"``, ``"10MB"``, ``"512Mi"``, ``"1.5g"`` (case-insensitive; MB = 10**6, MiB = 2**20)."""
    raw = text.strip().lower()
    digits = raw.rstrip("kmgtib")
    unit = raw[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        raise InvalidParameterValue(f"{field_name}: {text!r} is not a {what} such as 512Mi or 2GB") from None
    if unit not in _SIZE_UNITS or value < 0:
        raise InvalidParameterValue(f"{field_name}: {text!r} is not a {what} such as 512Mi or 2GB")
    return int(value * _SIZE_UNITS[unit])


def parse_gpus(text: str) -> tuple[int, str | None]:
    """Parse ``CAPSTAN_GPUS``: ``"4"`` -> ``(4, None)``, ``"4xa100"`` -> ``(4, "a100")``."""
    count, sep, model = text.strip().lower().partition("x")
    model = model.strip()
    if not count.strip().isdigit() or (sep and not model) or not all(c.isalnum() or c in "._-" for c in model):
        raise InvalidParameterValue(f"CAPSTAN_GPUS: {text!r} is not a GPU count such as 4 or 4xa100")
    return int(count), (model or None)


def parse_origins(text: str, *, field_name: str = "CAPSTAN_ALLOWED_ORIGINS") -> tuple[str, ...]:
    """Comma-separated web origins (``https://ui.example.com,http://localhost:3000``), normalised to lower case
    without a trailing slash; `InvalidParameterValue` naming ``field_name`` for anything that is not an origin."""
    from urllib.parse import urlsplit

    origins: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item.rstrip("/"))
        try:
            parts.port  # noqa: B018  # raises ValueError for a port that is not a number
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query \
                or parts.fragment or parts.username is not None:
            raise InvalidParameterValue(f"{field_name}: {item!r} is not a web origin such as "
                                        "https://ui.example.com or http://localhost:3000")
        netloc = parts.netloc.lower()
        default_port = ":80" if parts.scheme == "http" else ":443"
        if netloc.endswith(default_port):  # browsers leave the default port out of the Origin header
            netloc = netloc[:-len(default_port)]
        origins.append(f"{parts.scheme}://{netloc}")
    return tuple(origins)


def parse_hosts(text: str, *, field_name: str = "CAPSTAN_ALLOWED_HOSTS") -> tuple[str, ...]:
    """Comma-separated host names a server answers to (``capstan.example.com``, ``10.0.0.5:8080``, ``*`` for
    any); `InvalidParameterValue` naming ``field_name`` for anything else."""
    import re

    pattern = re.compile(r"\*|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?")
    hosts: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not pattern.fullmatch(item):
            raise InvalidParameterValue(f"{field_name}: {item!r} is not a host such as capstan.example.com, "
                                        "10.0.0.5:8080 or *")
        hosts.append(item.lower())
    return tuple(hosts)


_DB_URL = re.compile(r"([A-Za-z][A-Za-z0-9]*)(\+[A-Za-z0-9_]+)?://(.*)", re.S)
DB_URL_HINT = "sqlite:///path/to/capstan.db or postgresql+psycopg://user@host/db"


def redact_url(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (for error messages)."""
    return re.sub(r"^([^@/]*//)?([^:@/]*):[^@/]*@", lambda m: f"{m.group(1) or ''}{m.group(2)}:***@", url)


def check_db_url(url: str, *, field_name: str = "CAPSTAN_DB_URL") -> str:
    """A metadata-store URL Capstan can open: SQLite or PostgreSQL (``postgresql://`` and ``postgres://`` mean
    the psycopg 3 driver Capstan ships with); `InvalidParameterValue` naming ``field_name`` otherwise."""
    match = _DB_URL.fullmatch(url.strip())
    if match is None:
        raise InvalidParameterValue(f"{field_name}: {redact_url(url)!r} is not a database URL; use {DB_URL_HINT}")
    dialect, driver, rest = match.group(1).lower(), (match.group(2) or "")[1:].lower(), match.group(3)
    if dialect == "sqlite" and driver in ("", "pysqlite"):
        return url.strip()
    if dialect in ("postgresql", "postgres"):
        if driver in ("", "psycopg"):
            return f"postgresql+psycopg://{rest}"
        raise InvalidParameterValue(f"{field_name}: the PostgreSQL driver {driver!r} is not supported; use "
                                    "postgresql+psycopg://user@host/db (psycopg 3, installed with Capstan)")
    raise InvalidParameterValue(f"{field_name}: {dialect}{'+' + driver if driver else ''} databases are not "
                                f"supported; use {DB_URL_HINT}")


def check_token(token: str, *, field_name: str = "CAPSTAN_TOKEN") -> str:
    """A Capstan token secret (``cap_`` and 40 URL-safe characters, as `capstan tokens create` prints it); the
    message never repeats the value."""
    text = token.strip()
    if not is_token_secret(text):
        raise InvalidParameterValue(
            f"{field_name}: the value ({len(text)} characters) does not look like a Capstan token ({TOKEN_MARK} "
            "and 40 more characters, as printed by `capstan tokens create`)")
    return text


# Artifact roots the artifact store is tested with, and the package each needs.
_ARTIFACT_SCHEMES = {"file": None, "s3": ("s3fs", "pip install 'capstan[s3]'")}


def check_artifacts(location: str, *, field_name: str = "CAPSTAN_ARTIFACTS") -> str:
    """An artifact root Capstan can write to: a folder, ``file://...`` or ``s3://bucket/prefix`` (with s3fs
    installed); `InvalidParameterValue` naming ``field_name`` and what to install or use otherwise."""
    import importlib.util

    scheme = location.split("://", 1)[0].lower() if "://" in location else "file"
    if scheme not in _ARTIFACT_SCHEMES:
        raise InvalidParameterValue(
            f"{field_name}: {scheme}:// storage is not supported; use a local folder or s3://bucket/prefix (any "
            "S3-compatible store, with CAPSTAN_S3_ENDPOINT)")
    needs = _ARTIFACT_SCHEMES[scheme]
    if needs is not None:
        try:
            found = importlib.util.find_spec(needs[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise InvalidParameterValue(f"{field_name}: {scheme}:// needs the {needs[0]} package: {needs[1]}")
    return location


def _whole(env: Mapping[str, str], name: str, *, minimum: int) -> int:
    try:
        value = int(env[name])
    except ValueError:
        raise InvalidParameterValue(f"{name}: {env[name]!r} is not a whole number") from None
    if value < minimum:
        raise InvalidParameterValue(f"{name}: must be at least {minimum}, got {value}")
    return value


def _job_overrides(env: Mapping[str, str]) -> dict[str, object]:
    """The fields a training job's runner sets for its workers (and torchrun's ``RANK``)."""
    out: dict[str, object] = {}
    for field_name, variable in (("job_id", "CAPSTAN_JOB_ID"), ("job_run_id", "CAPSTAN_JOB_RUN_ID"),
                                 ("checkpoint_uri", "CAPSTAN_CHECKPOINT_URI")):
        if env.get(variable):
            out[field_name] = env[variable]
    if env.get("CAPSTAN_JOB_ATTEMPT"):
        out["job_attempt"] = _whole(env, "CAPSTAN_JOB_ATTEMPT", minimum=0)
    if env.get("CAPSTAN_JOB_LOG_ALL_RANKS"):
        out["job_log_all_ranks"] = env["CAPSTAN_JOB_LOG_ALL_RANKS"].strip().lower() in ("1", "true", "yes")
    if env.get("CAPSTAN_CHECKPOINT_KEEP"):
        out["checkpoint_keep"] = _whole(env, "CAPSTAN_CHECKPOINT_KEEP", minimum=1)
    if env.get("RANK", "").strip().isdigit():  # torchrun's variable, not ours: anything else is ignored
        out["rank"] = int(env["RANK"])
    return out


def _trial_overrides(env: Mapping[str, str]) -> dict[str, object]:
    """The fields a study's controller sets for a trial process (`capstan.report` reads them)."""
    out: dict[str, object] = {}
    if env.get("CAPSTAN_TRIAL_ADDRESS"):
        out["trial_address"] = env["CAPSTAN_TRIAL_ADDRESS"]
    if env.get("CAPSTAN_TRIAL_KEY"):
        out["trial_key"] = env["CAPSTAN_TRIAL_KEY"]
    if env.get("CAPSTAN_TRIAL_NUMBER"):
        out["trial_number"] = _whole(env, "CAPSTAN_TRIAL_NUMBER", minimum=0)
    if env.get("CAPSTAN_TRIAL_LISTEN"):
        out["trial_listen"] = check_trial_listen(env["CAPSTAN_TRIAL_LISTEN"])
    return out


def check_trial_listen(value: str, variable: str = "CAPSTAN_TRIAL_LISTEN") -> str:
    """``HOST:PORT`` (port 0 to 65535; 0 picks a free one), trimmed; `InvalidParameterValue` naming ``variable``."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535 or any(c.isspace() for c in host):
        raise InvalidParameterValue(f"{variable}: {value!r} is not HOST:PORT (e.g. study-controller.team-a.svc:7077)")
    return text


def _step_overrides(env: Mapping[str, str]) -> dict[str, object]:
    """The fields the pipeline orchestrator sets for a step's attempt (runs it starts are tagged with them)."""
    out: dict[str, object] = {}
    if env.get("CAPSTAN_RUN_ID") and env.get("CAPSTAN_STEP"):
        out["pipeline_run_id"] = env["CAPSTAN_RUN_ID"]
        out["pipeline_step"] = env["CAPSTAN_STEP"]
    return out


BACKENDS = ("local", "kubernetes")
"""Where pipeline steps and training jobs run (``CAPSTAN_BACKEND``): local threads and processes, or Jobs on a
Kubernetes cluster."""
KUBE_ADMISSIONS = ("capstan", "kueue", "none")
"""Who admits the Jobs of the ``kubernetes`` backend (``CAPSTAN_KUBE_ADMISSION``): Capstan's own queue, Kueue, or
nobody (the Jobs are created at once, with no Kueue label, and the scheduler places their pods)."""


def _choice(env: Mapping[str, str], variable: str, allowed: tuple[str, ...]) -> str:
    """The value of ``variable`` (trimmed, lower-cased) when it is one of ``allowed``."""
    value = env[variable].strip().lower()
    if value not in allowed:
        raise InvalidParameterValue(f"{variable}: {env[variable]!r} is not one of {', '.join(allowed)}")
    return value


def _kube_overrides(env: Mapping[str, str]) -> dict[str, object]:
    """The Kubernetes executor's backend, kubeconfig context, namespace, admission and pod secrets."""
    out: dict[str, object] = {}
    if env.get("CAPSTAN_BACKEND"):
        out["backend"] = _choice(env, "CAPSTAN_BACKEND", BACKENDS)
    if env.get("CAPSTAN_KUBE_CONTEXT"):
        out["kube_context"] = env["CAPSTAN_KUBE_CONTEXT"]
    if env.get("CAPSTAN_KUBE_NAMESPACE"):
        out["kube_namespace"] = env["CAPSTAN_KUBE_NAMESPACE"]
    if env.get("CAPSTAN_KUBE_ADMISSION"):
        out["kube_admission"] = _choice(env, "CAPSTAN_KUBE_ADMISSION", KUBE_ADMISSIONS)
    if env.get("CAPSTAN_KUBE_ENV_FROM"):
        out["kube_env_from"] = tuple(n.strip() for n in env["CAPSTAN_KUBE_ENV_FROM"].split(",") if n.strip())
    if env.get("CAPSTAN_KUBE_DATASETS"):
        out["kube_datasets"] = tuple(n.strip() for n in env["CAPSTAN_KUBE_DATASETS"].split(",") if n.strip())
    return out


ENV_VARIABLES: Mapping[str, str] = {
    "home": "CAPSTAN_HOME",
    "db_url": "CAPSTAN_DB_URL",
    "artifacts": "CAPSTAN_ARTIFACTS",
    "s3_endpoint": "CAPSTAN_S3_ENDPOINT",
    "url": "CAPSTAN_URL",
    "token": "CAPSTAN_TOKEN",
    "project": "CAPSTAN_PROJECT",
    "artifact_max_bytes": "CAPSTAN_ARTIFACT_MAX_BYTES",
    "metric_flush_interval_s": "CAPSTAN_METRIC_FLUSH_INTERVAL",
    "declared_gpus": "CAPSTAN_GPUS",
    "declared_gpu_model": "CAPSTAN_GPUS",
    "allowed_origins": "CAPSTAN_ALLOWED_ORIGINS",
    "allowed_hosts": "CAPSTAN_ALLOWED_HOSTS",
    "server_host": "CAPSTAN_SERVER_HOST",
    "experiment": "CAPSTAN_EXPERIMENT",
    "job_id": "CAPSTAN_JOB_ID",
    "job_run_id": "CAPSTAN_JOB_RUN_ID",
    "job_attempt": "CAPSTAN_JOB_ATTEMPT",
    "job_log_all_ranks": "CAPSTAN_JOB_LOG_ALL_RANKS",
    "checkpoint_uri": "CAPSTAN_CHECKPOINT_URI",
    "checkpoint_keep": "CAPSTAN_CHECKPOINT_KEEP",
    "trial_address": "CAPSTAN_TRIAL_ADDRESS",
    "trial_key": "CAPSTAN_TRIAL_KEY",
    "trial_number": "CAPSTAN_TRIAL_NUMBER",
    "trial_listen": "CAPSTAN_TRIAL_LISTEN",
    "pipeline_run_id": "CAPSTAN_RUN_ID",
    "pipeline_step": "CAPSTAN_STEP",
    "workload_id": "CAPSTAN_WORKLOAD_ID",
    "backend": "CAPSTAN_BACKEND",
    "kube_context": "CAPSTAN_KUBE_CONTEXT",
    "kube_namespace": "CAPSTAN_KUBE_NAMESPACE",
    "kube_env_from": "CAPSTAN_KUBE_ENV_FROM",
    "kube_datasets": "CAPSTAN_KUBE_DATASETS",
    "kube_admission": "CAPSTAN_KUBE_ADMISSION",
}
"""The environment variable of each `Settings` field that has one (``CAPSTAN_GPUS`` sets two fields)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where Capstan keeps its state and how it reaches a server.

    Attributes:
        home: root folder for local state (``CAPSTAN_HOME``, default ``~/.capstan``).
        db_url: SQLAlchemy URL of the metadata store (``CAPSTAN_DB_URL``); SQLite under ``home`` by default,
            ``postgresql+psycopg://...`` for PostgreSQL.
        artifacts: artifact root (``CAPSTAN_ARTIFACTS``): a folder, or an fsspec URL such as ``s3://bucket/prefix``.
        s3_endpoint: endpoint URL for S3-compatible artifact stores (``CAPSTAN_S3_ENDPOINT``).
        url: a remote Capstan server (``CAPSTAN_URL``); ``None`` means the SDK writes to the local stores directly.
        token: bearer token sent to ``url`` (``CAPSTAN_TOKEN``).
        project: project (tenant) used when a call names none (``CAPSTAN_PROJECT``, default ``default``).
        artifact_max_bytes: largest single artifact accepted (``CAPSTAN_ARTIFACT_MAX_BYTES``, default 5 GB).
        metric_flush_interval_s: how often the SDK's background writer flushes buffered metrics.
        declared_gpus: GPUs the local executor schedules on instead of detecting them (``CAPSTAN_GPUS``: ``4`` or
            ``4xa100``; ``0`` means none); ``None`` detects them through NVML or ``nvidia-smi``.
        declared_gpu_model: the model of the declared GPUs (``a100`` in ``4xa100``), matched by ``gpu_flavor``.
        allowed_origins: web origins besides the server's own whose browser requests the server accepts, with
            CORS (``CAPSTAN_ALLOWED_ORIGINS``, comma-separated; ``capstan server --allowed-origin``).
        allowed_hosts: ``Host`` header values the server answers to (``CAPSTAN_ALLOWED_HOSTS``; ``capstan server
            --allowed-host``). A loopback server always accepts localhost, 127.0.0.1 and [::1] on its port; a
            server on any other address accepts every host unless this is set.
        server_host: the address a server worker process is bound to (``CAPSTAN_SERVER_HOST``, set by ``capstan
            server --workers N`` for its workers); it decides whether single-user mode is possible. ``None``
            means an address reachable from the network.
        experiment: experiment of runs that name none (``CAPSTAN_EXPERIMENT``); ``None`` means ``Default``.
        job_id: the training job this process is a worker of (``CAPSTAN_JOB_ID``, set by the job runner).
        job_run_id: the job's tracking run (``CAPSTAN_JOB_RUN_ID``): the fluent API logs to it instead of starting
            a run, from rank 0 only unless ``job_log_all_ranks`` (``CAPSTAN_JOB_LOG_ALL_RANKS=1``).
        job_attempt: which start of the job's gang this is, from 1 (``CAPSTAN_JOB_ATTEMPT``).
        checkpoint_uri: where `capstan.checkpoint` keeps checkpoints (``CAPSTAN_CHECKPOINT_URI``,
            ``runs:/<run id>/<path>``); ``None`` means ``checkpoints`` of the active run.
        checkpoint_keep: how many checkpoints `capstan.checkpoint.save` retains (``CAPSTAN_CHECKPOINT_KEEP``).
        rank: this process's global rank in a distributed job (torchrun's ``RANK``, read here too though it is not
            a ``CAPSTAN_*`` variable); ``None`` outside one.
        trial_address: where the controller of a hyperparameter study listens for its trial's reports
            (``CAPSTAN_TRIAL_ADDRESS``, set by the controller for a script or training-job trial); ``None`` outside
            a trial, where `capstan.report` does nothing.
        trial_key: the secret the trial authenticates to that controller with (``CAPSTAN_TRIAL_KEY``, hex).
        trial_number: which trial of its study this process runs (``CAPSTAN_TRIAL_NUMBER``).
        trial_listen: for a study's controller, ``HOST:PORT`` (``CAPSTAN_TRIAL_LISTEN``): it listens for its
            trials' reports on TCP port PORT of every interface, tells the trials ``tcp://HOST:PORT``, and takes
            the key from ``trial_key`` (a Secret's, never generated into the trials' environment); the study
            controller pod of `capstan.k8s.render_studies` (decision 0745). ``None``: a local socket and a fresh key.
        pipeline_run_id, pipeline_step: the pipeline run and step whose attempt this process runs
            (``CAPSTAN_RUN_ID``, ``CAPSTAN_STEP``, set by the orchestrator); tracking runs started here are tagged
            with them (``capstan.pipeline.run_id``, ``capstan.pipeline.step``), the lineage the web UI shows.
        workload_id: the queue workload this process runs in (``CAPSTAN_WORKLOAD_ID``, set from the queue's lease
            for a pipeline step's attempt, a training job's workers and a study's script trials, and by
            `capstan.queue.executor.LocalExecutor`); `capstan.checkpoint.save` reports each save to it.
        backend: where pipeline steps and training jobs run (``CAPSTAN_BACKEND``): ``local`` (threads and worker
            processes) or ``kubernetes`` (a Job per attempt, `capstan.k8s.executor`, `capstan.k8s.training_launcher`).
        kube_context: the kubeconfig context of the ``kubernetes`` backend (``CAPSTAN_KUBE_CONTEXT``); ``None``
            means the current context, or the pod's service account inside a cluster.
        kube_namespace: the namespace its Jobs go to (``CAPSTAN_KUBE_NAMESPACE``); ``None`` means the context's.
        kube_env_from: Secrets whose keys the training pods of the ``kubernetes`` backend see as environment
            variables (``CAPSTAN_KUBE_ENV_FROM``, comma-separated; ``envFrom``): how they reach the stores.
        kube_datasets: PersistentVolumeClaims mounted in every pod of the ``kubernetes`` backend's training Jobs
            (``CAPSTAN_KUBE_DATASETS``, comma-separated ``NAME:/PATH[:ro|rw]``, read-only unless ``rw``; checked
            when the backend is built, `capstan.k8s.training_launcher.kube_gang_launcher`).
        kube_admission: who admits the ``kubernetes`` backend's Jobs (``CAPSTAN_KUBE_ADMISSION``): ``capstan``
            (Capstan's queue; Jobs created suspended and unsuspended on admission) or ``kueue`` (Kueue alone, seen
            through its Workloads; Capstan's queue is not asked; decision 0726) or ``none`` (nobody: the Jobs are
            created at once without Kueue labels and the scheduler places the pods; the study controller pod of a
            study without a queue, decision 0745).
        env_set: the ``CAPSTAN_*`` variables of `ENV_VARIABLES` that were set (even empty) when these settings
            were read by `from_env`, so that an error about a value can name the variable the user set (see
            `source_of`).
    """

    home: Path
    db_url: str
    artifacts: str
    s3_endpoint: str | None = None
    url: str | None = None
    token: str | None = None
    project: str = "default"
    artifact_max_bytes: int = 5 * 1024**3
    metric_flush_interval_s: float = 0.2
    declared_gpus: int | None = None
    declared_gpu_model: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    server_host: str | None = None
    experiment: str | None = None
    job_id: str | None = None
    job_run_id: str | None = None
    job_attempt: int = 0
    job_log_all_ranks: bool = False
    checkpoint_uri: str | None = None
    checkpoint_keep: int = 3
    rank: int | None = None
    trial_address: str | None = None
    trial_key: str | None = None
    trial_number: int | None = None
    trial_listen: str | None = None
    pipeline_run_id: str | None = None
    pipeline_step: str | None = None
    workload_id: str | None = None
    backend: str = "local"
    kube_context: str | None = None
    kube_namespace: str | None = None
    kube_env_from: tuple[str, ...] = ()
    kube_datasets: tuple[str, ...] = ()
    kube_admission: str = "capstan"
    env_set: frozenset[str] = frozenset()

    @classmethod
    def for_home(cls, home: Path | str, **overrides: object) -> Settings:
        """Settings rooted at ``home`` with the embedded defaults (SQLite file and a local artifact folder)."""
        root = Path(home).expanduser().resolve()
        base = cls(home=root, db_url=f"sqlite:///{root / 'capstan.db'}", artifacts=str(root / "artifacts"))
        return replace(base, **overrides)  # type: ignore[arg-type]  # overrides are checked by the dataclass

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``CAPSTAN_*`` variables (``os.environ`` when ``environ`` is omitted)."""
        env = os.environ if environ is None else environ
        home = Path(env.get("CAPSTAN_HOME") or "~/.capstan").expanduser().resolve()
        settings = cls.for_home(home)
        overrides: dict[str, object] = {}
        if env.get("CAPSTAN_DB_URL"):
            overrides["db_url"] = check_db_url(env["CAPSTAN_DB_URL"])
        if env.get("CAPSTAN_ARTIFACTS"):
            overrides["artifacts"] = check_artifacts(env["CAPSTAN_ARTIFACTS"])
        if env.get("CAPSTAN_S3_ENDPOINT"):
            overrides["s3_endpoint"] = env["CAPSTAN_S3_ENDPOINT"]
        if env.get("CAPSTAN_URL"):
            overrides["url"] = env["CAPSTAN_URL"].rstrip("/")
        if env.get("CAPSTAN_TOKEN"):
            overrides["token"] = check_token(env["CAPSTAN_TOKEN"])
        if env.get("CAPSTAN_PROJECT"):
            overrides["project"] = env["CAPSTAN_PROJECT"]
        if env.get("CAPSTAN_ARTIFACT_MAX_BYTES"):
            overrides["artifact_max_bytes"] = parse_size(
                env["CAPSTAN_ARTIFACT_MAX_BYTES"], field_name="CAPSTAN_ARTIFACT_MAX_BYTES")
        if env.get("CAPSTAN_METRIC_FLUSH_INTERVAL"):
            try:
                overrides["metric_flush_interval_s"] = float(env["CAPSTAN_METRIC_FLUSH_INTERVAL"])
            except ValueError:
                raise InvalidParameterValue("CAPSTAN_METRIC_FLUSH_INTERVAL: expected seconds as a number") from None
        if env.get("CAPSTAN_GPUS"):
            overrides["declared_gpus"], overrides["declared_gpu_model"] = parse_gpus(env["CAPSTAN_GPUS"])
        if env.get("CAPSTAN_ALLOWED_ORIGINS"):
            overrides["allowed_origins"] = parse_origins(env["CAPSTAN_ALLOWED_ORIGINS"])
        if env.get("CAPSTAN_ALLOWED_HOSTS"):
            overrides["allowed_hosts"] = parse_hosts(env["CAPSTAN_ALLOWED_HOSTS"])
        if env.get("CAPSTAN_SERVER_HOST"):
            overrides["server_host"] = env["CAPSTAN_SERVER_HOST"]
        if env.get("CAPSTAN_EXPERIMENT"):
            overrides["experiment"] = env["CAPSTAN_EXPERIMENT"]
        overrides.update(_job_overrides(env))
        overrides.update(_trial_overrides(env))
        overrides.update(_step_overrides(env))
        if env.get("CAPSTAN_WORKLOAD_ID"):
            overrides["workload_id"] = env["CAPSTAN_WORKLOAD_ID"]
        overrides.update(_kube_overrides(env))
        env_set = frozenset(name for name in ENV_VARIABLES.values() if name in env)
        return replace(settings, env_set=env_set, **overrides)  # type: ignore[arg-type]  # keys are field names

    def store_environment(self) -> dict[str, str]:
        """The ``CAPSTAN_*`` variables that make `from_env` in a child process (a server worker, a serving replica,
        the quickstart's server) use these same local stores and limits. Never ``CAPSTAN_URL`` or a token: a child
        works on the stores directly."""
        env = {"CAPSTAN_HOME": str(self.home), "CAPSTAN_DB_URL": self.db_url, "CAPSTAN_ARTIFACTS": self.artifacts,
               "CAPSTAN_PROJECT": self.project, "CAPSTAN_ARTIFACT_MAX_BYTES": str(self.artifact_max_bytes)}
        if self.s3_endpoint:
            env["CAPSTAN_S3_ENDPOINT"] = self.s3_endpoint
        if self.allowed_origins:
            env["CAPSTAN_ALLOWED_ORIGINS"] = ",".join(self.allowed_origins)
        if self.allowed_hosts:
            env["CAPSTAN_ALLOWED_HOSTS"] = ",".join(self.allowed_hosts)
        if self.declared_gpus is not None:
            model = f"x{self.declared_gpu_model}" if self.declared_gpu_model else ""
            env["CAPSTAN_GPUS"] = f"{self.declared_gpus}{model}"
        return env

    def source_of(self, field_name: str) -> str:
        """How an error names the setting ``field_name``: its environment variable (``CAPSTAN_ARTIFACTS``) when
        that variable was set, the field name (``artifacts``) otherwise."""
        variable = ENV_VARIABLES.get(field_name)
        if variable is None:
            raise ValueError(f"{field_name!r} is not a Settings field read from the environment")
        return variable if variable in self.env_set else field_name

    @property
    def is_sqlite(self) -> bool:
        """True when the metadata store is an SQLite database."""
        return self.db_url.startswith("sqlite")
