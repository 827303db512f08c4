"""MLflow mirroring of training runs (the run directory stays the source of truth).

`init_tracking` runs once per pipeline, in one process, before any training job: it creates the
tracking database (a fresh sqlite file initialised by several processes at once gets corrupted —
pipeline.md §5.2), the experiment with a pinned artifact location, and a parent run; it returns the
small dict the pipeline stores as `init.json`. Each training run then opens a child `RunTracker` that
logs the config under the same dotted names (`ep.beta`), one metric step per epoch and the run's files.
The tracker talks to MLflow through explicit run ids (`MlflowClient`), never a global "active run", so a
resumed job continues the very same MLflow run (its id is kept in the checkpoint).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .naming import mlflow_metric_name

TRACKING_ENV = "MLFLOW_TRACKING_URI"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def default_tracking_uri(root: Path) -> str:
    """$MLFLOW_TRACKING_URI if set (a shared server on a cluster), else a sqlite file under `root`."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def init_tracking(
    tracking_uri: str, experiment: str, artifact_root: Path | None = None, parent_name: str | None = None
) -> dict[str, str | None]:
    """Create (or reuse) the experiment and, with `parent_name`, open a parent run; return the ids.

    Call it from one process before parallel writers start (it creates and migrates the database)."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    elif artifact_root is not None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        experiment_id = client.create_experiment(
            experiment, artifact_location=artifact_root.resolve().as_uri()
        )
    else:
        experiment_id = client.create_experiment(experiment)
    parent = None
    if parent_name is not None:
        parent = client.create_run(experiment_id, run_name=parent_name, tags={"ep_core.role": "pipeline"})
    return {
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent.info.run_id if parent else None,
    }


def close_parent(init: dict[str, str], status: str = "FINISHED") -> None:
    _client(init["tracking_uri"]).set_terminated(init["parent_run_id"], status=status)


def _scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _scalars(f"{name}.", value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class RunTracker:
    """One training run's MLflow mirror. `init` is the dict written by `init_tracking` (init.json)."""

    def __init__(self, init: dict[str, str], run_name: str, tags: dict[str, str] | None = None):
        self.init = init
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.client = _client(init["tracking_uri"])
        self.run_id: str | None = None

    @classmethod
    def from_file(cls, path: str | Path, run_name: str, tags: dict[str, str] | None = None) -> RunTracker:
        return cls(json.loads(Path(path).read_text()), run_name, tags)

    def start(self, flat_config: dict[str, Any], resume_run_id: str | None = None) -> str:
        from mlflow.entities import Param

        if resume_run_id is not None:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            self.client.set_tag(resume_run_id, "ep_core.resumed", str(int(time.time())))
            return resume_run_id
        tags = dict(self.tags)
        if self.init.get("parent_run_id"):
            tags["mlflow.parentRunId"] = self.init["parent_run_id"]
        if "SLURM_JOB_ID" in os.environ:
            tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        run = self.client.create_run(self.init["experiment_id"], run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [
            Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in flat_config.items()
        ]
        self.client.log_batch(self.run_id, params=params)
        return self.run_id

    def log_epoch(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(row["epoch"])
        metrics = [
            Metric(mlflow_metric_name(k), v, now, step) for k, v in _scalars("", row).items() if k != "epoch"
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, metrics: dict[str, Any], out: Path, files: list[str]) -> None:
        """Log the summary metrics (as `final.test_acc`, `best_val.epoch`, ...), the run's files, and the
        MLflow status: FINISHED for completed runs, FAILED otherwise (diverged runs keep a tag saying so)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        summary = {k: v for k, v in metrics.items() if k in ("final", "best_val", "best_test_over_epochs")}
        summary |= {
            k: metrics[k] for k in ("wall_seconds", "peak_memory_mb", "epochs_completed") if k in metrics
        }
        final = [Metric(f"summary.{k}", v, now, 0) for k, v in _scalars("", summary).items()]
        self.client.log_batch(self.run_id, metrics=final)
        self.client.set_tag(self.run_id, "ep_core.status", metrics["status"])
        if metrics.get("alphas"):  # the caps a relu_random run drew (seeded): a param beside the config
            self.client.log_param(self.run_id, "model.alphas", json.dumps(metrics["alphas"]))
        for name in files:
            if (out / name).exists():
                self.client.log_artifact(self.run_id, str(out / name))
        self.client.set_terminated(
            self.run_id, status="FINISHED" if metrics["status"] == "completed" else "FAILED"
        )


def summarise_parent(init: dict[str, str], metrics_files: list[Path]) -> dict[str, Any]:
    """Close the pipeline's parent run and list its child runs beside each run's metrics.json: the
    summary says, per run, whether MLflow's final test accuracy equals the run directory's."""
    client = _client(init["tracking_uri"])
    children = client.search_runs(
        [init["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{init['parent_run_id']}'"
    )
    by_id = {run.info.run_id: run for run in children}
    rows = []
    for path in metrics_files:
        metrics = json.loads(path.read_text())
        run = by_id.get(metrics.get("mlflow_run_id"))
        mlflow_acc = run.data.metrics.get("summary.final.test_acc") if run else None
        rows.append({
            "run_dir": str(path.parent), "status": metrics["status"],
            "mlflow_run_id": metrics.get("mlflow_run_id"), "mlflow_status": run.info.status if run else None,
            "test_acc": metrics["final"]["test_acc"], "mlflow_test_acc": mlflow_acc,
            "consistent": run is not None and mlflow_acc == metrics["final"]["test_acc"],
        })  # fmt: skip
    close_parent(init)
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
