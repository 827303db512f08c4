"""One way to make a figure: seaborn style, no pyplot, PNG + PDF with the same stem, byte-deterministic.

Figures are `matplotlib.figure.Figure` objects drawn with seaborn's axes-level functions, never through
pyplot: no GUI backend is touched (the pipeline runs headless, and importing this package must not switch a
notebook's backend), and no global figure registry keeps them alive. Files are written without timestamps
(PDF CreationDate, PNG Software) so the same inputs give the same bytes, and atomically, so a killed job
leaves no half-written figure for the workflow to take as done.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..training.checkpoint import atomic_write_bytes

PathLike = str | Path
STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper", font_scale=1.15),
    "axes.titlesize": 10,
    "figure.titlesize": 12,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "svg.hashsalt": "ep-core",
}
DPI = 150
PALETTE = "colorblind"


def pdf_path_for(png: PathLike, pdf: PathLike | None) -> Path:
    """The PDF beside the PNG (same stem) unless given."""
    return Path(pdf) if pdf is not None else Path(png).with_suffix(".pdf")


@contextmanager
def figure(
    png: PathLike,
    pdf: PathLike | None = None,
    *,
    nrows: int = 1,
    ncols: int = 1,
    panel: tuple[float, float] = (4.2, 3.2),
    title: str | None = None,
    caption: str | None = None,
    **subplots,
) -> Iterator[tuple[Figure, np.ndarray]]:
    """Yield (figure, 2-D array of axes); on leaving, add title and caption and write PNG and PDF."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
        yield fig, axes
        if title:
            fig.suptitle(title)
        if caption:
            width = int(16 * panel[0] * ncols)  # characters per line at the caption's font size
            fig.text(0.01, -0.01, textwrap.fill(caption, width), ha="left", va="top", fontsize=8, wrap=False)
        save(fig, png, pdf_path_for(png, pdf))


def save(fig: Figure, png: PathLike, pdf: PathLike) -> None:
    for path, kind, metadata in (
        (Path(png), "png", {"Software": None}),
        (Path(pdf), "pdf", {"CreationDate": None, "Creator": None, "Producer": None}),
    ):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata=metadata)
        data = buffer.getvalue()
        atomic_write_bytes(path, lambda f, data=data: f.write(data))


def no_data(ax: Axes, message: str) -> None:
    """An empty panel that says why it is empty (rather than a figure that silently lacks a curve)."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def grid_shape(panels: int, max_columns: int = 4) -> tuple[int, int]:
    ncols = max(1, min(panels, max_columns))
    return max(1, -(-panels // ncols)), ncols
