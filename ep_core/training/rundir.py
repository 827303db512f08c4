"""A run directory's files, read back with one-line errors, and `ep-core sync` (MLflow made level with them).

A run directory is the source of truth: `config.yaml`, `history.csv`, `metrics.json` (written last: its
presence means the run ended), the checkpoint while it runs, and `mlflow.json` when it is mirrored. A file
that cannot be read is a `RunDirError` naming it and what to do, never a traceback.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

CHECKPOINT, METRICS, HISTORY, MODEL, CONFIG = (
    "checkpoint.pt",
    "metrics.json",
    "history.csv",
    "model.pt",
    "config.yaml",
)
# What a run directory's metrics.json says of how the run ended (ep_core.training.run writes it).
STATUSES = ("completed", "diverged", "failed")
COMPLETED, UNSUCCESSFUL = STATUSES[0], STATUSES[1:]
LINK = "mlflow.json"  # the run's MLflow link (ep_core.tracking.mirror writes it)
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before the latest: the fallback if that is unreadable
RECORDS = (CONFIG, HISTORY, METRICS, MODEL, "weights_summary.csv", "weights_histograms.json")


class RunDirError(ConfigError):
    """A run directory that cannot be used as it is: one line naming the file and what to do."""


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def prepare_out(out: Path) -> None:
    """Create the run directory and prove it writable (a probe file, removed), or raise RunDirError and
    leave nothing behind: `--out` that is a file, under a file, or in a read-only or immutable place."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: is a file, not a directory; choose another --out")
    missing = [p for p in (out, *out.parents) if not p.exists()]
    above = missing[-1].parent if missing else out
    if not above.is_dir():
        raise RunDirError(f"--out {out}: {above} is a file, not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        for path in missing:  # innermost first: remove only what this call created
            try:
                path.rmdir()
            except OSError:
                break
        raise RunDirError(
            f"--out {out}: cannot write there ({error.strerror or first_line(error)}); choose another --out"
        ) from None


def parse_file(path: Path, parse, kind: str, what: str, error: type[ValueError] = RunDirError) -> Any:
    """`parse(text of path)`, or `error`: one line naming the file, why, and `what` to do about it."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as problem:
        raise error(f"{path}: not valid {kind} ({first_line(problem)}); {what}") from None


def read_saved_config(out: Path) -> dict[str, dict[str, Any]] | None:
    path = out / CONFIG
    if not path.exists():
        return None
    what = "restore it or use another --out (deleting it loses the record of the run's settings)"
    saved = parse_file(path, yaml.safe_load, "YAML", what)
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        raise RunDirError(f"{path}: not a run configuration (a mapping of sections); {what}")
    return saved


def read_metrics(out: Path) -> dict[str, Any] | None:
    path = out / METRICS
    if not path.exists():
        return None
    what = "delete it and rerun to resume the run from its checkpoint (or redo it)"
    metrics = parse_file(path, json.loads, "JSON", what)
    if not isinstance(metrics, dict) or "status" not in metrics or "final" not in metrics:
        raise RunDirError(f"{path}: not a run's metrics (no status/final); {what}")
    return metrics


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_history(out: Path) -> list[dict[str, Any]]:
    path = out / HISTORY
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            rows = [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    except (OSError, csv.Error) as error:
        raise RunDirError(f"{path}: not readable ({first_line(error)})") from None
    if any(not isinstance(r.get("epoch"), int) for r in rows):
        raise RunDirError(f"{path}: a row without an integer epoch; it is not a run's history")
    return rows


def flat_params(saved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in saved.items() for k, v in section.items()}
