"""What a run leaves in its output directory (besides the checkpoint).

* ``config.yaml``             the resolved configuration (every 'auto' filled in);
* ``history.csv``             one row per epoch (see `HISTORY_MEASUREMENTS` for the columns that are
                              measurements of the machine — times, memory — not functions of the seed);
* ``metrics.json``            the run's summary and status, written last: its presence means the run ended;
* ``model.pt``                the final `state_dict`;
* ``weights_summary.csv``     per parameter tensor: mean, std, mean |w|, and the fraction of near-zero
                              weights |w| < f · rms₀ for f in 1e-3, 1e-2, 1e-1, where rms₀ is the RMS of that
                              tensor at initialisation — a scale-free 'near zero' that compares layers whose
                              init scales differ by 10× (gain/√fan_in);
* ``weights_histograms.json`` per tensor, a 100-bin histogram (the authors' plot) of its final values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write_text

HISTORY_MEASUREMENTS = (
    "epoch_seconds", "free_seconds", "nudged_seconds", "gradient_seconds", "step_seconds", "peak_memory_mb",
    "allreduce_seconds",  # data-parallel runs: the step's reductions (rank 0's wall time)
    "train_seconds", "fidelity/probe_seconds",  # the epoch's training (probes included); the probes alone
)  # fmt: skip
NEAR_ZERO_FRACTIONS = (1e-3, 1e-2, 1e-1)
HISTOGRAM_BINS = 100


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_csv(path: Path, rows: list[dict[str, Any]], first_columns: tuple[str, ...] = ()) -> None:
    """Rows as CSV, columns in order of first appearance after `first_columns` — which also make the
    header of a file with no rows (a run that diverged in its first epoch), still a readable table."""
    columns: list[str] = list(first_columns)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    # repr-precision floats so a resumed run's history can be compared exactly with an uninterrupted one.
    return repr(value) if isinstance(value, float) else value


def initial_scales(model: nn.Module) -> dict[str, float]:
    """RMS of every parameter tensor now (call at initialisation); 0-RMS tensors (e.g. BN biases) get 0."""
    return {name: p.detach().pow(2).mean().sqrt().item() for name, p in model.named_parameters()}


def weight_summary(model: nn.Module, scales: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for name, p in model.named_parameters():
        w = p.detach().double().flatten().cpu()
        kind = "bias" if ("bias" in name.split(".")[-1] or name.startswith("biases.")) else "weight"
        row: dict[str, Any] = {
            "name": name, "kind": kind, "shape": "x".join(map(str, p.shape)), "numel": w.numel(),
            "mean": w.mean().item(), "std": w.std().item() if w.numel() > 1 else 0.0,
            "mean_abs": w.abs().mean().item(), "max_abs": w.abs().max().item(), "init_rms": scales[name],
        }  # fmt: skip
        for f in NEAR_ZERO_FRACTIONS:
            threshold = f * scales[name]
            row[f"frac_below_{f:g}_init"] = (
                (w.abs() < threshold).double().mean().item() if threshold else math.nan
            )
        rows.append(row)
    return rows


def weight_histograms(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    out = {}
    for name, p in model.named_parameters():
        w = p.detach().double().flatten().cpu()
        w = w[torch.isfinite(w)]  # a diverged run's weights may hold inf/NaN: histogram what is finite
        lo, hi = (w.min().item(), w.max().item()) if w.numel() else (0.0, 0.0)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        counts = torch.histc(w, bins=HISTOGRAM_BINS, min=lo, max=hi)
        edges = torch.linspace(lo, hi, HISTOGRAM_BINS + 1, dtype=torch.float64)
        out[name] = {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}
    return out


def write_weight_records(out: Path, model: nn.Module, scales: dict[str, float]) -> None:
    write_csv(out / "weights_summary.csv", weight_summary(model, scales))
    write_json(out / "weights_histograms.json", weight_histograms(model))
