"""SQLAlchemy Core tables of the metadata store (foundation tables).

Times are integer milliseconds since the epoch (MLflow's convention). Metric keys are interned in `metric_keys`
and metric points live in a compact table keyed by integers, which keeps a point near 30 bytes on disk.
Other subsystems (pipelines, queue) define their tables on the same `metadata` object in their own modules and
ship their own Alembic branch.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

projects = Table(
    "projects", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
)

experiments = Table(
    "experiments", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("name", String(256), nullable=False),
    Column("artifact_location", Text, nullable=False),
    Column("lifecycle_stage", String(16), nullable=False, default="active"),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
    UniqueConstraint("project_id", "name"),
    sqlite_autoincrement=True,  # ids are never reused: artifact paths and links embed them
)

experiment_tags = Table(
    "experiment_tags", metadata,
    Column("experiment_id", Integer, ForeignKey("experiments.id"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("experiment_id", "key"),
)

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uuid", String(32), nullable=False, unique=True),
    Column("experiment_id", Integer, ForeignKey("experiments.id"), nullable=False),
    Column("name", String(250), nullable=False, default=""),
    Column("user_id", String(256), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("start_time", BigInteger, nullable=True),
    Column("end_time", BigInteger, nullable=True),
    Column("lifecycle_stage", String(16), nullable=False, default="active"),
    Column("deleted_at", BigInteger, nullable=True),
    Column("artifact_uri", Text, nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("git_commit", String(64), nullable=False, default=""),
    Index(None, "experiment_id", "start_time"),
    sqlite_autoincrement=True,  # ids are never reused: artifact paths and links embed them
)

params = Table(
    "params", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "key"),
)

run_tags = Table(
    "run_tags", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "key"),
)

metric_keys = Table(
    "metric_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(250), nullable=False, unique=True),
)

# One row per metric point. The whole row is the primary key (a clustered WITHOUT ROWID table on SQLite), so an
# identical re-logged point is absorbed, as in MLflow, and no separate index is needed.
metrics = Table(
    "metrics", metadata,
    Column("run_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("is_nan", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("run_id", "key_id", "step", "timestamp", "value", "is_nan"),
    sqlite_with_rowid=False,
)

# Write-time summaries of the metric points (decision 0526): one row per run, key and block of `METRIC_BLOCK`
# consecutive steps (``block = step >> 6``), recomputed from ``metrics`` whenever a write touches the block. A chart
# over a million points reads the summaries of the blocks that lie inside each bucket and only the points at the
# bucket's two edges. Sums of steps are floats (no integer overflow); ``nans`` counts NaN points. A block holding
# both infinities sums to NaN, which SQLite stores as NULL; its min and max already send the read to the points.
metric_blocks = Table(
    "metric_blocks", metadata,
    Column("run_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("block", BigInteger, nullable=False),
    Column("points", Integer, nullable=False),
    Column("step_sum", Float, nullable=False),
    Column("value_sum", Float, nullable=True),  # NULL on SQLite when infinities of both signs make it NaN
    Column("value_min", Float, nullable=False),
    Column("value_max", Float, nullable=False),
    Column("nans", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "key_id", "block"),
    sqlite_with_rowid=False,
)

latest_metrics = Table(
    "latest_metrics", metadata,
    Column("run_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("is_nan", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("run_id", "key_id"),
    Index(None, "key_id", "value"),
)

run_outputs = Table(
    "run_outputs", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("model_id", String(64), nullable=False),
    Column("step", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("run_id", "model_id"),
)

run_inputs = Table(
    "run_inputs", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # "dataset" or "model"
    Column("ref", String(256), nullable=False),  # dataset digest or model id
    Column("payload", Text, nullable=False, default="{}"),  # JSON
    PrimaryKeyConstraint("run_id", "kind", "ref"),
)

logged_models = Table(
    "logged_models", metadata,
    Column("id", String(64), primary_key=True),
    Column("experiment_id", Integer, ForeignKey("experiments.id"), nullable=False),
    Column("name", String(256), nullable=False),
    Column("artifact_location", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("status_message", Text, nullable=False, default=""),
    Column("model_type", String(256), nullable=False, default=""),
    Column("source_run_uuid", String(32), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("lifecycle_stage", String(16), nullable=False, default="active"),
    Column("params", Text, nullable=False, default="{}"),  # JSON object
    Column("tags", Text, nullable=False, default="{}"),  # JSON object
    Index(None, "experiment_id"),
)

# Metric points logged with a ``model_id`` (MLflow 3): what ``LoggedModel.metrics`` lists. Own migration branch
# (``logged_model_metrics``).
logged_model_metrics = Table(
    "logged_model_metrics", metadata,
    Column("model_id", String(64), nullable=False),
    Column("run_uuid", String(32), nullable=False),
    Column("key", String(250), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("is_nan", Boolean, nullable=False, default=False),
    Column("dataset_name", String(500), nullable=False, default=""),
    Column("dataset_digest", String(36), nullable=False, default=""),
    PrimaryKeyConstraint("model_id", "run_uuid", "key", "step", "timestamp"),
)

registered_models = Table(
    "registered_models", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("name", String(256), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,  # ids are never reused: artifact paths and links embed them
)

registered_model_tags = Table(
    "registered_model_tags", metadata,
    Column("model_id", Integer, ForeignKey("registered_models.id"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("model_id", "key"),
)

model_versions = Table(
    "model_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", Integer, ForeignKey("registered_models.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("storage_location", Text, nullable=False),
    Column("run_uuid", String(32), nullable=True),
    Column("run_link", Text, nullable=False, default=""),
    Column("logged_model_id", String(64), nullable=True),
    Column("description", Text, nullable=False, default=""),
    Column("status", String(32), nullable=False, default="READY"),
    Column("stage", String(32), nullable=False, default="None"),
    Column("user_id", String(256), nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("model_id", "version"),
    Index(None, "run_uuid"),
    sqlite_autoincrement=True,  # ids are never reused: artifact paths and links embed them
)

model_version_tags = Table(
    "model_version_tags", metadata,
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("version_id", "key"),
)

model_aliases = Table(
    "model_aliases", metadata,
    Column("model_id", Integer, ForeignKey("registered_models.id"), nullable=False),
    Column("alias", String(256), nullable=False),
    Column("version", Integer, nullable=False),
    PrimaryKeyConstraint("model_id", "alias"),
)

# Content-addressed artifacts: `blobs` holds each distinct content once; `artifact_entries` maps logical paths
# (e.g. "3/<run uuid>/artifacts/model/MLmodel") to blobs. A blob no entry references is garbage.
blobs = Table(
    "blobs", metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

artifact_entries = Table(
    "artifact_entries", metadata,
    Column("path", String(1024), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "digest"),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", BigInteger, nullable=False),
    Column("project", String(256), nullable=False, default=""),
    Column("kind", String(64), nullable=False),
    Column("object_id", String(256), nullable=False),
    Column("type", String(16), nullable=False),  # Normal / Warning
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("data", Text, nullable=False, default="{}"),  # JSON object
    Index(None, "kind", "object_id", "id"),
    Index(None, "kind", "reason", "id"),  # the latest events of one reason (the web UI's recent preemptions)
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("name", String(256), nullable=False, default=""),
    Column("prefix", String(16), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Column("last_used_at", BigInteger, nullable=True),
    Column("scope", String(300), nullable=True),  # deployment:PROJECT/NAME (migration 0600)
)

project_members = Table(
    "project_members", metadata,
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("role", String(16), nullable=False),
    PrimaryKeyConstraint("project_id", "user_id"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", BigInteger, nullable=False),
    Column("user", String(256), nullable=False),
    Column("action", String(256), nullable=False),
    Column("target", Text, nullable=False, default=""),
    Column("project", String(256), nullable=False, default=""),
    Column("status", Integer, nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
    Index(None, "time"),
)

# -- managed deployments (capstan.serving.deployments_sql; migration 0400) --------------------------------------------
deployments = Table(
    "deployments", metadata,
    Column("project", String(256), nullable=False),
    Column("name", String(63), nullable=False),
    Column("spec", Text, nullable=False),  # DeploymentSpec.to_dict() as JSON
    Column("previous", Text, nullable=True),  # the spec of the revision before, as JSON
    Column("previous_versions", Text, nullable=False, default="[]"),  # JSON, as versions
    Column("revision", Integer, nullable=False),
    Column("versions", Text, nullable=False),  # JSON [[role, "models:/NAME/VERSION"], ...]
    Column("desired_replicas", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("project", "name"),
)

deployment_replicas = Table(
    "deployment_replicas", metadata,
    Column("id", String(64), primary_key=True),
    Column("project", String(256), nullable=False),
    Column("deployment", String(63), nullable=False),
    Column("role", String(16), nullable=False),
    Column("model_version", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("url", String(256), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("restarts", Integer, nullable=False, default=0),
    Column("started_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("peak_memory", BigInteger, nullable=True),  # the process's peak RSS in bytes (migration 0980)
    Index(None, "project", "deployment"),
)

deployment_load = Table(
    "deployment_load", metadata,
    Column("project", String(256), nullable=False),
    Column("deployment", String(63), nullable=False),
    Column("worker", String(128), nullable=False),
    Column("in_flight", Integer, nullable=False),
    Column("completed", Integer, nullable=False),
    Column("waiting", Integer, nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("project", "deployment", "worker"),
)

# -- training jobs (capstan.training.jobs_sql; migration 0700) ------------------------------------------------------
jobs = Table(
    "jobs", metadata,
    Column("id", String(80), primary_key=True),  # <name>-<6 hex>
    Column("project", String(256), nullable=False),
    Column("name", String(63), nullable=False),
    Column("user", String(256), nullable=False, default=""),
    Column("spec", Text, nullable=False),  # TrainingJobSpec.to_dict() as JSON
    Column("state", String(16), nullable=False),
    Column("run_id", String(64), nullable=True),
    Column("workload", String(256), nullable=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("restarts", Integer, nullable=False, default=0),
    Column("preemptions", Integer, nullable=False, default=0),
    Column("reason", String(64), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger, nullable=True),
    Column("ended_ms", BigInteger, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("owner", String(300), nullable=True),  # the runner holding the job: "host:pid"
    Column("heartbeat_ms", BigInteger, nullable=True),  # when that runner last renewed its hold (migration 0990)
    Index(None, "project", "created_ms"),
    Index(None, "state"),
)

job_attempts = Table(
    "job_attempts", metadata,
    Column("job_id", String(80), nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_ms", BigInteger, nullable=False),
    Column("ended_ms", BigInteger, nullable=True),
    Column("master_port", Integer, nullable=False),
    Column("log_dir", Text, nullable=False),
    Column("reason", String(32), nullable=True),
    Column("rank", Integer, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("message", Text, nullable=False, default=""),
    Column("rank_peak_memory", Text, nullable=True),  # JSON list: each rank's peak RSS in bytes (migration 0970)
    PrimaryKeyConstraint("job_id", "number"),
)

# -- hyperparameter studies (capstan.store.studies_sql; migration 0800) -----------------------------------------------
studies = Table(
    "studies", metadata,
    Column("project", String(256), nullable=False),
    Column("name", String(63), nullable=False),
    Column("spec", Text, nullable=False),  # StudySpec.to_dict() as JSON
    Column("state", String(16), nullable=False),  # Running / Succeeded / Failed / Stopped
    Column("reason", String(64), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("parent_run_id", String(32), nullable=True),
    Column("owner", String(128), nullable=True),  # host:pid of the controller running it
    Column("user", String(256), nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("ended_ms", BigInteger, nullable=True),
    PrimaryKeyConstraint("project", "name"),
)

study_trials = Table(
    "study_trials", metadata,
    Column("project", String(256), nullable=False),
    Column("study", String(63), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # RUNNING / COMPLETE / PRUNED / FAILED
    Column("params", Text, nullable=False),  # JSON object
    Column("value", Float, nullable=True),
    Column("metrics", Text, nullable=False, default="{}"),  # JSON object: the final values of the study's metrics
    Column("intermediate", Text, nullable=False, default="[]"),  # JSON [[step, value], ...]
    Column("system_attrs", Text, nullable=False, default="{}"),  # JSON: the sampler's and pruner's notes (Optuna)
    Column("run_id", String(32), nullable=True),
    Column("workload", String(256), nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("pid", Integer, nullable=True),
    Column("started_ms", BigInteger, nullable=False),
    Column("ended_ms", BigInteger, nullable=True),
    Column("message", Text, nullable=False, default=""),
    PrimaryKeyConstraint("project", "study", "number"),
)
