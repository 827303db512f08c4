"""The pipeline's parent MLflow run: created once before any training job (`init_tracking`, whose dict
the pipeline stores as `init.json`), marked with the pipeline's outcome, given the tables, figures and
report, and closed with a summary of its child runs against their run directories (`summarise_parent`).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..training.rundir import LINK, STATUSES
from .mirror import read_link, sync_run
from .store import MirrorError, TrackingError, bounded, check_uri, experiment_id_for, read_init, store_client


def init_tracking(
    tracking_uri: str, experiment: str, artifact_root: Path | None = None, parent_name: str | None = None
) -> dict[str, str | None]:
    """Create (or reuse) the experiment and, with `parent_name`, open a parent run; return the ids.
    Raises MirrorError (one line) if the store does not answer in time."""
    client = store_client(check_uri(tracking_uri))
    experiment_id = bounded("creating the experiment", experiment_id_for, client, experiment, artifact_root)
    parent = None
    if parent_name is not None:
        parent = bounded("creating the parent run", client.create_run, experiment_id, run_name=parent_name,
                         tags={"ep_core.role": "pipeline"})  # fmt: skip
    return {
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent.info.run_id if parent else None,
    }


def set_parent_status(init: dict[str, Any], status: str) -> None:
    client = store_client(init["tracking_uri"])
    bounded(f"marking the parent run {status}", client.set_terminated, init["parent_run_id"], status=status)


# Ctrl-C in a terminal sends SIGINT to Snakemake and to its local jobs alike. Snakemake says so when it
# handles the signal first; when a training job (which checkpoints and exits 128 + SIGINT) is faster, it
# reports a failed job instead, and only the job's exit status tells the two apart.
INTERRUPTED = re.compile(r"Terminating processes on user request|non-zero exit status 130\b")


def pipeline_status(log: str | Path | list | None, failed: bool) -> str:
    """The parent run's status at the end of a pipeline: FINISHED, KILLED (interrupted by the user:
    Snakemake's log — one file or the list its hooks receive — says 'Terminating processes on user
    request', or a job exited with 130, stopped by SIGINT) or FAILED."""
    if not failed:
        return "FINISHED"
    text = ""
    for path in log if isinstance(log, list | tuple) else [log] if log else []:
        with contextlib.suppress(OSError):  # a log that is gone says nothing
            text += Path(path).read_text()
    return "KILLED" if INTERRUPTED.search(text) else "FAILED"


def mark_parent(init_path: str | Path, status: str) -> None:
    """For the Snakefile's onstart/onsuccess/onerror hooks: set the parent run's status; never raises
    (a pipeline's outcome must not depend on MLflow), one line either way."""
    if not Path(init_path).exists():
        return
    try:
        init = read_init(init_path)
        if init.get("parent_run_id"):
            if status == "RUNNING":
                client = store_client(init["tracking_uri"])
                bounded("reopening the parent run", client.update_run, init["parent_run_id"], status=status)
            else:
                set_parent_status(init, status)
            print(f"MLflow: parent run {init['parent_run_id']} {status}", file=sys.stderr)
    except (MirrorError, TrackingError) as error:
        print(f"warning: MLflow: parent run not marked {status} ({error})", file=sys.stderr)


def summarise_parent(init: dict[str, Any], metrics_files: list[Path]) -> dict[str, Any]:
    """Close the pipeline's parent run and list its child runs beside each run's metrics.json: the
    summary says, per run, whether MLflow's final test accuracy equals the run directory's. First each run
    directory is synced (what an outage held back); MirrorError if MLflow still lacks some."""
    behind = [
        path.parent for path in metrics_files if (path.parent / LINK).exists() and not sync_run(path.parent)
    ]
    if behind:
        raise MirrorError(f"MLflow still lacks {len(behind)} run(s), e.g. {behind[0]}; rerun when it answers")
    client = store_client(init["tracking_uri"])
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


def log_files_to_parent(init: dict[str, str], files: list[Path], root: Path) -> None:
    """Log files as artifacts of the pipeline's parent run, under their folder relative to `root`
    (results/tables/main.md → tables/main.md; results/report.html → report.html)."""
    client = store_client(init["tracking_uri"])
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

    client = store_client(init["tracking_uri"])
    run_id = init["parent_run_id"]
    counts = {status: sum(r["status"] == status for r in summary["runs"]) for status in STATUSES}
    counts["total"] = len(summary["runs"])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"runs/{k}", float(v), now, 0) for k, v in counts.items()])
    client.set_tag(run_id, "ep_core.runs", ", ".join(f"{v} {k}" for k, v in counts.items()))
    client.log_dict(run_id, summary, "summary.json")
    log_files_to_parent(init, files, root)
    return counts
