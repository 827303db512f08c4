"""One training run's MLflow mirror, and `ep-core sync`: the run directory is the source of truth.

A run is handed a `RunTracker` (ep_core.training.run never builds one), which never lets MLflow stop or
stall training (its calls are bounded: ep_core.tracking.store):

* a failure prints one warning line and training goes on; what was not sent stays in the run directory —
  `history.csv`, `metrics.json` and the link file `mlflow.json`, which records the MLflow run id and how
  much of the run MLflow has — and is sent when the server answers again, by the job itself or by
  `ep-core sync RUN_DIR` (`sync_run`; the pipeline's `mlflow_summary` runs it);
* one MLflow run per run directory, ever: `mlflow.json` is written (atomically) before the first call with
  a random key that tags the MLflow run, and the run id as soon as the run exists, so a rerun continues
  the same run whenever the kill happened (even before the first checkpoint, even between MLflow creating
  the run and the answer arriving).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ..numerics.naming import mlflow_metric_name
from ..training.checkpoint import atomic_write_text
from ..training.rundir import (
    COMPLETED,
    CONFIG,
    LINK,
    RECORDS,
    UNSUCCESSFUL,
    RunDirError,
    flat_params,
    parse_file,
    read_history,
    read_metrics,
    read_saved_config,
)
from .store import (
    KEY_TAG,
    RETRY_AFTER_S,
    MirrorError,
    TrackingError,
    bounded,
    check_uri,
    experiment_id_for,
    read_init,
    store_client,
)

MLFLOW_STATUS = {COMPLETED: "FINISHED"} | dict.fromkeys(UNSUCCESSFUL, "FAILED")
PROBE_METRIC = "test_acc"  # in every epoch row: which steps MLflow holds


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
    kept = ("final", "best_val", "best_test_over_epochs", "fidelity")
    summary = {k: v for k, v in metrics.items() if k in kept}
    scalars = ("wall_seconds", "peak_memory_mb", "epochs_completed", "slices")
    summary |= {k: metrics[k] for k in scalars if k in metrics}
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
            link["experiment_id"] = bounded("finding the experiment", experiment_id_for, client,
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
        status = MLFLOW_STATUS.get(metrics["status"], "FAILED")
        bounded(f"marking the run {status}", client.set_terminated, run_id, status=status)
        self.link["status"] = status
        self._save()

    def resync(self, out: Path) -> bool:
        """`sync_run(out)`: a finished run directory's records, from its own link file."""
        return sync_run(out)

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
            client = store_client(self.link["tracking_uri"])
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


def sync_run(out: str | Path) -> bool:
    """Send what MLflow lacks of run directory `out` (its link `mlflow.json` says where); True when the
    MLflow run is level with the directory. A directory never mirrored is a RunDirError."""
    out = Path(out)
    if not out.is_dir():
        raise RunDirError(f"{out}: not a run directory")
    link = read_link(out)
    if link is None:
        raise RunDirError(f"{out}: was never mirrored to MLflow (no mlflow.json); nothing to sync")
    saved = read_saved_config(out)
    if saved is None:
        raise RunDirError(f"{out}: no {CONFIG}; not a run directory")
    tracker = RunTracker(link, link["run_name"], link.get("tags"))
    tracker.attach(out, reopen=False)
    metrics = read_metrics(out)
    files = [out / name for name in RECORDS] if metrics is not None else []
    return tracker.sync(flat_params(saved), read_history(out), metrics, files)
