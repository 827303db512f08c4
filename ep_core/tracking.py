"""MLflow mirroring of training runs: the run directory is the source of truth, MLflow a mirror of it.

`init_tracking` runs once per pipeline, before any training job: it creates the experiment with a pinned
artifact location and a parent run, and returns the small dict the pipeline stores as `init.json`. Each
training run then mirrors itself through a `RunTracker`, which never lets MLflow stop or stall training:

* every call runs in a worker thread with a deadline (`EP_CORE_MLFLOW_TIMEOUT` seconds, default 30), and
  MLflow's own HTTP client is held to one short retry, so an unreachable server costs seconds, not the
  ~5 minutes of MLflow's default retries (pipeline.md §7);
* a failure prints one warning line and training goes on; what was not sent stays in the run directory —
  `history.csv`, `metrics.json` and the link file `mlflow.json`, which records the MLflow run id and how
  much of the run MLflow has — and is sent when the server answers again, by the job itself or by
  `ep-core sync RUN_DIR` (which the pipeline's `mlflow_summary` runs);
* one MLflow run per run directory, ever: `mlflow.json` is written (atomically) before the first call with
  a random key that tags the MLflow run, and the run id as soon as the run exists, so a rerun continues
  the same run whenever the kill happened (even before the first checkpoint, even between MLflow creating
  the run and the answer arriving);
* a fresh sqlite store is created and migrated under a file lock (`STORE.db.lock`): concurrent first
  writers corrupt an unlocked one (pipeline.md §5.2).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .naming import mlflow_metric_name
from .rundir import parse_file

TRACKING_ENV = "MLFLOW_TRACKING_URI"
TIMEOUT_ENV = "EP_CORE_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
STORE_TIMEOUT_S = 120.0  # creating a store may wait behind other processes' creation (a few seconds each)
RETRY_AFTER_S = 60.0  # during an outage, a job tries again at most this often (and always at the end)
LINK = "mlflow.json"
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")
STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
KEY_TAG = "ep_core.key"
PROBE_METRIC = "test_acc"  # in every epoch row: which steps MLflow holds


class TrackingError(ValueError):
    """A tracking URI or init file that cannot work: one line naming it and what is allowed."""


class MirrorError(Exception):
    """An MLflow call that failed or did not answer in time (never reaches training)."""


def check_uri(uri: str) -> str:
    scheme = uri.partition(":")[0] if "://" in uri or uri.startswith("sqlite:") else ""
    if scheme not in SCHEMES:
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


def _open_client(uri: str):
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    _bound_http_client()
    path = sqlite_path(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # MLflow creates and migrates the tables in its stores' constructors, without a lock (the client's
    # constructor already builds one); the stores are cached per process, so this runs once per process
    # and the later processes find the tables made.
    with FileLock(f"{path}.lock", timeout=STORE_TIMEOUT_S):
        client = MlflowClient(tracking_uri=uri)
        _ = client._tracking_client.store
        _ = client._get_registry_client().store
    return client


_CLIENTS: dict[str, Any] = {}


def _client(uri: str):
    """An MlflowClient for `uri`, its store created (under the lock for sqlite) within a deadline."""
    if uri not in _CLIENTS:
        _CLIENTS[uri] = bounded("opening the store", _open_client, uri, timeout=STORE_TIMEOUT_S)
    return _CLIENTS[uri]


def default_tracking_uri(root: Path) -> str:
    """$MLFLOW_TRACKING_URI if set (a shared server on a cluster), else a sqlite file under `root`."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _experiment_id(client, name: str, artifact_root: Path | None = None) -> str:
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


def init_tracking(
    tracking_uri: str, experiment: str, artifact_root: Path | None = None, parent_name: str | None = None
) -> dict[str, str | None]:
    """Create (or reuse) the experiment and, with `parent_name`, open a parent run; return the ids.
    Raises MirrorError (one line) if the store does not answer in time."""
    client = _client(check_uri(tracking_uri))
    experiment_id = bounded("creating the experiment", _experiment_id, client, experiment, artifact_root)
    parent = None
    if parent_name is not None:
        parent = bounded("creating the parent run", client.create_run, experiment_id, run_name=parent_name,
                         tags={"ep_core.role": "pipeline"})  # fmt: skip
    return {
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent.info.run_id if parent else None,
    }


def read_init(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    what = "give a pipeline's results/mlflow/init.json or a tracking URI"
    if not path.is_file():
        raise TrackingError(f"{path}: no such init.json; {what}")
    init = parse_file(path, json.loads, "JSON", what, TrackingError)
    if not isinstance(init, dict) or "tracking_uri" not in init or "experiment_id" not in init:
        raise TrackingError(f"{path}: not an init.json (needs tracking_uri and experiment_id)")
    return init


def set_parent_status(init: dict[str, Any], status: str) -> None:
    client = _client(init["tracking_uri"])
    bounded(f"marking the parent run {status}", client.set_terminated, init["parent_run_id"], status=status)


def pipeline_status(log: str | Path | list | None, failed: bool) -> str:
    """The parent run's status at the end of a pipeline: FINISHED, KILLED (interrupted by the user:
    Snakemake's log — one file or the list its hooks receive — says 'Terminating processes on user
    request') or FAILED."""
    if not failed:
        return "FINISHED"
    text = ""
    for path in log if isinstance(log, list | tuple) else [log] if log else []:
        with contextlib.suppress(OSError):  # a log that is gone says nothing
            text += Path(path).read_text()
    return "KILLED" if "Terminating processes on user request" in text else "FAILED"


def mark_parent(init_path: str | Path, status: str) -> None:
    """For the Snakefile's onstart/onsuccess/onerror hooks: set the parent run's status; never raises
    (a pipeline's outcome must not depend on MLflow), one line either way."""
    if not Path(init_path).exists():
        return
    try:
        init = read_init(init_path)
        if init.get("parent_run_id"):
            if status == "RUNNING":
                client = _client(init["tracking_uri"])
                bounded("reopening the parent run", client.update_run, init["parent_run_id"], status=status)
            else:
                set_parent_status(init, status)
            print(f"MLflow: parent run {init['parent_run_id']} {status}", file=sys.stderr)
    except (MirrorError, TrackingError) as error:
        print(f"warning: MLflow: parent run not marked {status} ({error})", file=sys.stderr)


def _scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _scalars(f"{name}.", value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _summary_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    summary = {k: v for k, v in metrics.items() if k in ("final", "best_val", "best_test_over_epochs")}
    summary |= {k: metrics[k] for k in ("wall_seconds", "peak_memory_mb", "epochs_completed") if k in metrics}
    return {f"summary.{k}": v for k, v in _scalars("", summary).items()}


def read_link(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / LINK
    if not path.exists():
        return None
    link = parse_file(
        path, json.loads, "JSON", "delete it to mirror the run as a new MLflow run", TrackingError
    )
    if not isinstance(link, dict) or "tracking_uri" not in link or "key" not in link:
        raise TrackingError(
            f"{path}: not an MLflow link file; delete it to mirror the run as a new MLflow run"
        )
    return link


class RunTracker:
    """One training run's MLflow mirror. `init` holds tracking_uri and experiment_id (a pipeline's
    init.json, with its parent_run_id) or experiment_name (resolved at the first call that succeeds)."""

    def __init__(self, init: dict[str, Any], run_name: str, tags: dict[str, str] | None = None):
        self.init = dict(init)
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.out: Path | None = None
        self.link: dict[str, Any] = {}
        self.down = False  # the last call failed: one warning said so; the next success says so too
        self.retry_at = 0.0
        self.uncertain = False  # a failed call may have reached MLflow: ask which epochs it holds
        # Tags of this attempt (world size, devices): set on the MLflow run once per process, so a run
        # resumed on other hardware says so.
        self.runtime_tags: dict[str, str] = {}
        self._runtime_sent = False

    @classmethod
    def from_file(cls, path: str | Path, run_name: str, tags: dict[str, str] | None = None) -> RunTracker:
        return cls(read_init(path), run_name, tags)

    @classmethod
    def for_uri(cls, uri: str, experiment: str, run_name: str, tags: dict[str, str] | None = None):
        return cls({"tracking_uri": check_uri(uri), "experiment_name": experiment}, run_name, tags)

    @property
    def run_id(self) -> str | None:
        return self.link.get("run_id")

    # --- the link file ------------------------------------------------------------------------------------

    def attach(self, out: Path, resume_run_id: str | None = None, reopen: bool = True) -> None:
        """Bind to run directory `out`: continue its link (same tracking URI; with `reopen` its MLflow run
        is marked RUNNING again) or write a new one, before any MLflow call, so whatever happens next, a
        rerun finds it. `resume_run_id`: the run id of a checkpoint written before links existed."""
        self.out = Path(out)
        link = read_link(out)
        if link is not None and link["tracking_uri"] == self.init["tracking_uri"]:
            self.link = link
            self.link["resumed"] = reopen
            self.uncertain = True  # the kill may have come between a send and the link's update
        else:
            if link is not None:
                print(f"{out}: was mirrored to {link['tracking_uri']}; now mirrored to "
                      f"{self.init['tracking_uri']} as a new MLflow run", file=sys.stderr)  # fmt: skip
            self.link = {
                "tracking_uri": self.init["tracking_uri"], "experiment_id": self.init.get("experiment_id"),
                "experiment_name": self.init.get("experiment_name"),
                "parent_run_id": self.init.get("parent_run_id"), "run_name": self.run_name, "tags": self.tags,
                "key": uuid.uuid4().hex, "run_id": resume_run_id, "resumed": resume_run_id is not None,
                "params_sent": resume_run_id is not None, "epochs_sent": 0, "status": None,
            }  # fmt: skip
            self.uncertain = resume_run_id is not None  # an old run: ask MLflow what it already holds
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.out / LINK, json.dumps(self.link, indent=2) + "\n")

    # --- talking to MLflow -------------------------------------------------------------------------------

    def _open_run(self, client) -> str:
        """The MLflow run of this directory: the one in the link, the one tagged with its key (created by
        an earlier attempt whose answer was lost), or a new one; its id goes to the link at once."""
        link = self.link
        if link.get("run_id"):
            if link.pop("resumed", False):
                bounded("reopening the run", client.update_run, link["run_id"], status="RUNNING")
                bounded("tagging the run", client.set_tag, link["run_id"], "ep_core.resumed",
                        str(int(time.time())))  # fmt: skip
                self._save()
            self._send_runtime_tags(client, link["run_id"])
            return link["run_id"]
        if not link.get("experiment_id"):
            link["experiment_id"] = bounded("finding the experiment", _experiment_id, client,
                                            link["experiment_name"])  # fmt: skip
        found = bounded("searching the run", client.search_runs, [link["experiment_id"]],
                        filter_string=f"tags.`{KEY_TAG}` = '{link['key']}'")  # fmt: skip
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {**link["tags"], KEY_TAG: link["key"], "ep_core.run_dir": str(self.out.resolve())}
            if link.get("parent_run_id"):
                tags["mlflow.parentRunId"] = link["parent_run_id"]
            if "SLURM_JOB_ID" in os.environ:
                tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
            run = bounded("creating the run", client.create_run, link["experiment_id"],
                          run_name=link["run_name"], tags=tags)  # fmt: skip
            run_id = run.info.run_id
        link["run_id"] = run_id
        link.pop("resumed", None)
        self._save()
        self._send_runtime_tags(client, run_id)
        return run_id

    def _send_runtime_tags(self, client, run_id: str) -> None:
        if self._runtime_sent or not self.runtime_tags:
            return
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in self.runtime_tags.items()]
        bounded("tagging the run's devices", client.log_batch, run_id, tags=tags)
        self._runtime_sent = True

    def _send_epochs(self, client, run_id: str, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        link = self.link
        if self.uncertain:  # a batch may have landed without its answer: send only what MLflow lacks
            held = bounded("reading the run's history", client.get_metric_history, run_id, PROBE_METRIC)
            have = {m.step for m in held}
            pending = [r for r in rows if int(r["epoch"]) not in have]
        else:
            pending = rows[link["epochs_sent"] :]
        for row in pending:
            step = int(row["epoch"])
            stamp = int(time.time() * 1000)
            metrics = [
                Metric(mlflow_metric_name(k), v, stamp, step)
                for k, v in _scalars("", row).items()
                if k != "epoch"
            ]
            bounded(f"logging epoch {step}", client.log_batch, run_id, metrics=metrics)
        link["epochs_sent"] = len(rows)
        self._save()

    def _send_final(self, client, run_id: str, metrics: dict[str, Any], files: list[Path]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = [Metric(k, v, now, 0) for k, v in _summary_metrics(metrics).items()]
        bounded("logging the summary", client.log_batch, run_id, metrics=final)
        bounded("tagging the status", client.set_tag, run_id, "ep_core.status", metrics["status"])
        if metrics.get("alphas"):  # the caps a relu_random run drew (seeded): a param beside the config
            bounded(
                "logging the caps", client.log_param, run_id, "model.alphas", json.dumps(metrics["alphas"])
            )
        for path in files:
            if path.exists():
                bounded(f"sending {path.name}", client.log_artifact, run_id, str(path))
        status = STATUS.get(metrics["status"], "FAILED")
        bounded(f"marking the run {status}", client.set_terminated, run_id, status=status)
        self.link["status"] = status
        self._save()

    def sync(
        self,
        params: dict[str, Any],
        rows: list[dict[str, Any]],
        metrics: dict[str, Any] | None = None,
        files: list[Path] = (),
        stopped: bool = False,
        force: bool = True,
    ) -> bool:
        """Bring the MLflow run level with the run directory: params, every epoch row, and with `metrics`
        the summary, status and files (with `stopped`: status KILLED). True when MLflow is up to date;
        never raises. Without `force`, a recent failure makes this a no-op until RETRY_AFTER_S pass."""
        if self.down and not force and time.monotonic() < self.retry_at:
            return False
        try:
            client = _client(self.link["tracking_uri"])
            run_id = self._open_run(client)
            if not self.link["params_sent"]:
                self._send_params(client, run_id, params)
            self._send_epochs(client, run_id, rows)
            if metrics is not None:
                self._send_final(client, run_id, metrics, list(files))
            elif stopped:
                bounded("marking the run KILLED", client.set_terminated, run_id, status="KILLED")
        except (MirrorError, TrackingError) as error:
            if not self.down:
                where = f"{self.out}/{LINK}" if self.out else "the run directory"
                print(f"warning: MLflow mirror down ({error}); training goes on, what is not sent is kept "
                      f"(see {where}) and sent when MLflow answers, or by `ep-core sync {self.out}`",
                      file=sys.stderr, flush=True)  # fmt: skip
            self.down, self.uncertain = True, True
            self.retry_at = time.monotonic() + RETRY_AFTER_S
            return False
        if self.down:
            print(f"MLflow mirror back: run {self.run_id} is up to date", file=sys.stderr, flush=True)
        self.down, self.uncertain = False, False
        return True

    def _send_params(self, client, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            bounded("logging the parameters", client.log_batch, run_id, params=items[i : i + 100])
        self.link["params_sent"] = True
        self._save()


def summarise_parent(init: dict[str, Any], metrics_files: list[Path]) -> dict[str, Any]:
    """Close the pipeline's parent run and list its child runs beside each run's metrics.json: the
    summary says, per run, whether MLflow's final test accuracy equals the run directory's. First each run
    directory is synced (what an outage held back); MirrorError if MLflow still lacks some."""
    from .rundir import sync_run

    behind = [
        path.parent for path in metrics_files if (path.parent / LINK).exists() and not sync_run(path.parent)
    ]
    if behind:
        raise MirrorError(f"MLflow still lacks {len(behind)} run(s), e.g. {behind[0]}; rerun when it answers")
    client = _client(init["tracking_uri"])
    children = bounded("listing the pipeline's runs", client.search_runs, [init["experiment_id"]],
                       filter_string=f"tags.mlflow.parentRunId = '{init['parent_run_id']}'")  # fmt: skip
    by_id = {run.info.run_id: run for run in children}
    rows = []
    for path in metrics_files:
        metrics = json.loads(path.read_text())
        link = read_link(path.parent) or {}
        run_id = link.get("run_id") or metrics.get("mlflow_run_id")
        run = by_id.get(run_id)
        mlflow_acc = run.data.metrics.get("summary.final.test_acc") if run else None
        rows.append({
            "run_dir": str(path.parent), "status": metrics["status"],
            "mlflow_run_id": run_id, "mlflow_status": run.info.status if run else None,
            "test_acc": metrics["final"]["test_acc"], "mlflow_test_acc": mlflow_acc,
            "consistent": run is not None and mlflow_acc == metrics["final"]["test_acc"],
        })  # fmt: skip
    set_parent_status(init, "FINISHED")
    return {"parent_run_id": init["parent_run_id"], "children": len(children), "runs": rows}


STATUSES = ("completed", "diverged", "failed")


def log_files_to_parent(init: dict[str, str], files: list[Path], root: Path) -> None:
    """Log files as artifacts of the pipeline's parent run, under their folder relative to `root`
    (results/tables/main.md → tables/main.md; results/report.html → report.html)."""
    client = _client(init["tracking_uri"])
    for path in map(Path, files):
        folder = path.resolve().parent.relative_to(root.resolve()).as_posix()
        client.log_artifact(init["parent_run_id"], str(path), artifact_path=None if folder == "." else folder)


def log_to_parent(
    init: dict[str, str], summary: dict[str, Any], files: list[Path], root: Path
) -> dict[str, int]:
    """What a researcher landing on the pipeline's parent run needs: how many runs completed, diverged or
    failed (metrics `runs/completed`, ... and a tag), the summary itself, and the pipeline's tables and
    figures as artifacts (`log_files_to_parent`)."""
    from mlflow.entities import Metric

    client = _client(init["tracking_uri"])
    run_id = init["parent_run_id"]
    counts = {status: sum(r["status"] == status for r in summary["runs"]) for status in STATUSES}
    counts["total"] = len(summary["runs"])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"runs/{k}", float(v), now, 0) for k, v in counts.items()])
    client.set_tag(run_id, "ep_core.runs", ", ".join(f"{v} {k}" for k, v in counts.items()))
    client.log_dict(run_id, summary, "summary.json")
    log_files_to_parent(init, files, root)
    return counts
