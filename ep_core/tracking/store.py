"""The MLflow store behind every mirror: tracking URIs, one client per URI and process, and calls that
never stall training.

Every call runs in a worker thread with a deadline (`EP_CORE_MLFLOW_TIMEOUT` seconds, default 30), and
MLflow's own HTTP client is held to one short retry, so an unreachable server costs seconds, not the ~5
minutes of MLflow's default retries (pipeline.md §7). A fresh database store is created and migrated under
a lock that processes share: concurrent first writers corrupt an unlocked sqlite file (pipeline.md §5.2)
and fail each other on PostgreSQL (a duplicate key in pg_type: 15 of 16 measured). sqlite: a file lock
(`STORE.db.lock`); PostgreSQL: an advisory lock in the database (`PG_LOCK_KEY`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..training.rundir import parse_file

TRACKING_ENV = "MLFLOW_TRACKING_URI"


TIMEOUT_ENV = "EP_CORE_MLFLOW_TIMEOUT"


DEFAULT_TIMEOUT_S = 30.0


STORE_TIMEOUT_S = 120.0  # creating a store may wait behind other processes' creation (a few seconds each)


RETRY_AFTER_S = 60.0  # during an outage, a job tries again at most this often (and always at the end)


SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")


KEY_TAG = "ep_core.key"


PG_LOCK_KEY = int.from_bytes(b"ep-core")  # the advisory lock held while a process creates a PostgreSQL store


class TrackingError(ValueError):
    """A tracking URI or init file that cannot work: one line naming it and what is allowed."""


class MirrorError(Exception):
    """An MLflow call that failed or did not answer in time (never reaches training)."""


def check_uri(uri: str) -> str:
    scheme = uri.partition(":")[0] if "://" in uri or uri.startswith("sqlite:") else ""
    if scheme.partition("+")[0] not in SCHEMES:  # SQLAlchemy's dialect+driver: postgresql+psycopg2://
        raise TrackingError(
            f"--mlflow: {uri!r} is not a tracking URI; valid: an init.json file or a URI with scheme "
            f"{', '.join(SCHEMES)} (e.g. sqlite:///mlflow.db, http://host:5000)"
        )
    return uri


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise TrackingError(f"{TIMEOUT_ENV}: expected seconds, got {raw!r}") from None
    if not value > 0:
        raise TrackingError(f"{TIMEOUT_ENV}: must be positive, got {raw!r}")
    return value


def bounded(what: str, call: Callable, *args, timeout: float | None = None, **kwargs) -> Any:
    """`call(*args, **kwargs)` in a daemon thread; MirrorError if it raises or outlasts `timeout` (a stuck
    call is abandoned, not killed: the thread dies with the process)."""
    timeout = timeout_s() if timeout is None else timeout
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call(*args, **kwargs)
        except BaseException as error:  # reported to the caller as one line
            box["error"] = error

    worker = threading.Thread(target=target, name=f"mlflow {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise MirrorError(f"{what}: no answer in {timeout:g} s")
    if "error" in box:
        error = box["error"]
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise MirrorError(f"{what}: {type(error).__name__}: {first}")
    return box.get("value")


def _bound_http_client() -> None:
    # Read by MLflow's client at each request; a user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s() / 3))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?")[0]
    return None if rest in ("", ":memory:") else Path(rest)


_CLIENTS: dict[str, Any] = {}  # one client per tracking URI and process


@contextlib.contextmanager
def _pg_advisory_lock(uri: str) -> Iterator[None]:
    """PG_LOCK_KEY, held by a connection of this process's own (a session lock: it ends with the connection
    whatever happens, so a killed process never leaves it held)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            connection.commit()  # not idle in a transaction while the store is created
            yield
    finally:
        engine.dispose()


def _creation_lock(uri: str) -> contextlib.AbstractContextManager | None:
    """The lock held while this process creates `uri`'s store (sqlite: a file lock, PostgreSQL: an
    advisory lock), or None for a store this process does not create (a server creates its own tables)."""
    from filelock import FileLock

    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(f"{path}.lock", timeout=STORE_TIMEOUT_S)
    if uri.startswith(("postgresql:", "postgresql+")):
        return _pg_advisory_lock(uri)
    return None


def _open_client(uri: str):
    from mlflow.tracking import MlflowClient

    _bound_http_client()
    lock = _creation_lock(uri)
    if lock is None:
        return MlflowClient(tracking_uri=uri)
    # MLflow creates and migrates the tables in its stores' constructors, without a lock (the client's
    # constructor already builds one); the stores are cached per process, so this runs once per process
    # and the later processes find the tables made.
    with lock:
        client = MlflowClient(tracking_uri=uri)
        _ = client._tracking_client.store
        _ = client._get_registry_client().store
    return client


def store_client(uri: str):
    """An MlflowClient for `uri`, its store created (under the lock for sqlite and PostgreSQL) within a
    deadline."""
    if uri not in _CLIENTS:
        _CLIENTS[uri] = bounded("opening the store", _open_client, uri, timeout=STORE_TIMEOUT_S)
    return _CLIENTS[uri]


def default_tracking_uri(root: Path) -> str:
    """$MLFLOW_TRACKING_URI if set (a shared server on a cluster), else a sqlite file under `root`."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def experiment_id_for(client, name: str, artifact_root: Path | None = None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_root is not None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        location = artifact_root.resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def read_init(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    what = "give a pipeline's results/mlflow/init.json or a tracking URI"
    if not path.is_file():
        raise TrackingError(f"{path}: no such init.json; {what}")
    init = parse_file(path, json.loads, "JSON", what, TrackingError)
    if not isinstance(init, dict) or "tracking_uri" not in init or "experiment_id" not in init:
        raise TrackingError(f"{path}: not an init.json (needs tracking_uri and experiment_id)")
    return init
