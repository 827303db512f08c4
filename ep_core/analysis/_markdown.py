"""Plain-text rendering shared by the tables: number formats, markdown tables, writing CSV + markdown."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..training.checkpoint import atomic_write_text

DASH = "–"  # an absent value (no runs, no paper figure), distinct from a measured 0


def missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def number(value: object, digits: int = 1, *, signed: bool = False) -> str:
    if missing(value):
        return DASH
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def duration(seconds: object) -> str:
    """A wall time readable at every scale, a demo's seconds as a paper run's days: '42 s', '3.5 min',
    '31.2 h'."""
    if missing(seconds):
        return DASH
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def paper_number(value: object) -> str:
    """A figure quoted from the paper, exactly as printed there (93.92, 90.3)."""
    return DASH if missing(value) else f"{float(value):g}"


def mean_std(mean: object, std: object, n: int, digits: int = 1) -> str:
    """'92.1 ± 0.3 (n=3)'; one run has no spread: '92.1 (n=1)'; no runs: '–'."""
    if n == 0 or missing(mean):
        return DASH
    if n == 1 or missing(std):
        return f"{float(mean):.{digits}f} (n={n})"
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f} (n={n})"


def flag(value: object) -> str:
    """A boolean finding: 'yes', 'no', or '–' when the data cannot decide."""
    return DASH if missing(value) else ("yes" if bool(value) else "no")


def to_markdown(cells: pd.DataFrame) -> str:
    """A GitHub markdown table of already formatted string cells (pipes escaped)."""

    def row(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [row(cells.columns), row(["---"] * len(cells.columns))]
    lines += [row(r) for r in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_csv_and_markdown(
    frame: pd.DataFrame, csv_path: str | Path, md_path: str | Path, markdown: str
) -> None:
    """The full-precision table as CSV and its readable rendering as markdown, both written atomically."""
    atomic_write_text(Path(csv_path), frame.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(Path(md_path), markdown)


# The note under every table whose *runs* column is `runs_cells`
RUNS_NOTE = (
    "- *runs*: completed runs, which every mean is over; diverged or failed runs are counted apart and "
    "excluded. A run *with a dead layer* completed, with a hidden layer that stopped learning (all its units "
    "at 0: ep_core/training/dead_layers.py); it is in the means.\n"
)


def runs_cells(table: pd.DataFrame) -> list[str]:
    """'3', '3 (+1 failed)', '3 (1 with a dead layer)' or both, from the n, n_failed and n_dead columns."""
    cells = []
    for n, failed, dead in zip(table["n"], table["n_failed"], table["n_dead"], strict=True):
        notes = [f"+{failed} failed"] if failed else []
        notes += [f"{dead} with a dead layer"] if dead else []
        cells.append(f"{n}" + (f" ({'; '.join(notes)})" if notes else ""))
    return cells


def mean_std_cells(table: pd.DataFrame, stat: str, digits: int = 1) -> list[str]:
    """`mean_std` of the {stat}_mean, {stat}_std and n columns, row by row."""
    means, stds = table[f"{stat}_mean"], table[f"{stat}_std"]
    return [mean_std(m, s, n, digits) for m, s, n in zip(means, stds, table["n"], strict=True)]
