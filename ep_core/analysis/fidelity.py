"""Gradient fidelity over training: how close each monitored run's gradient stayed to the converged
centered-EP gradient, epoch by epoch.

A run whose phases are truncated probes itself every `train.fidelity_every` steps
(ep_core/training/fidelity.py): its history.csv has the epoch's mean cosine with the converged gradient
(`fidelity/cosine`, empty in an epoch without a probe), its metrics.json a summary. `ep.recipe: auto` runs
also record the sweep counts the monitor chose (`auto/free_iterations`, `auto/nudge_iterations`). The
table gives each run's probes, first / last / lowest cosine and the monitor's share of the training time;
the figure draws the cosine against epochs, one line per run, and auto's free sweeps on their ladder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..training.fidelity import ladder
from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, no_data
from .runs import label, load_runs

# The settings of a run that the monitor and `ep.recipe: auto` read (dotted keys of its saved config).
KEYS = ["ep.auto_floor", "train.fidelity_every", "train.fidelity_min"]  # load_runs has `recipe` and `phases`
LABEL = ["dataset", "network", "activation", "recipe", "seed"]
# metrics.json's `fidelity` summary, as the run table's columns
SUMMARY = ["probes", "cosine_first", "cosine_last", "cosine_mean", "cosine_min", "below_min", "seconds",
           "share_of_training"]  # fmt: skip
RUN_COLUMNS = ["run", "run_dir", "status", *LABEL, "phases", "free_iterations", "nudge_iterations",
               "auto_floor", "fidelity_every", "fidelity_min", *SUMMARY]  # fmt: skip
# history.csv's columns of an epoch's probes and auto's counts, as the long table's
HISTORY = {
    "fidelity/cosine": "cosine",
    "fidelity/cosine_min": "cosine_min",
    "fidelity/probes": "probes",
    "fidelity/below_min": "below_min",
    "fidelity/norm_error": "norm_error",
    "fidelity/free_distance": "free_distance",
    "auto/free_iterations": "auto_free_iterations",
    "auto/nudge_iterations": "auto_nudge_iterations",
}
EPOCH_COLUMNS = ["run", "run_dir", *LABEL, "phases", "fidelity_min", "epoch", *HISTORY.values()]


def _monitored(runs: pd.DataFrame) -> pd.DataFrame:
    """The EP runs whose saved config turns the monitor on (runs from before it have no such key)."""
    every = pd.to_numeric(runs["train.fidelity_every"], errors="coerce").fillna(0)
    return runs[(runs["algorithm"] != "bp") & (every > 0)]


def _labels(runs: pd.DataFrame) -> list[str]:
    """dataset/network/activation/recipe/s{seed}; runs that share one (a search's points) add the part of
    their directories that differs."""
    base = [f"{r.dataset}/{r.network}/{r.activation}/{r.recipe}/s{r.seed}" for r in runs.itertuples()]
    labels = []
    for name, run_dir in zip(base, runs["run_dir"], strict=True):
        twins = [d for n, d in zip(base, runs["run_dir"], strict=True) if n == name]
        if len(twins) > 1:
            name += f" ({os.path.relpath(run_dir, os.path.commonpath(twins))})"
        labels.append(name)
    return labels


def _summary(run_dir: str) -> dict[str, float]:
    """metrics.json's `fidelity` (0 probes and NaN figures without one)."""
    path = Path(run_dir) / "metrics.json"
    summary = (json.loads(path.read_text()).get("fidelity") if path.is_file() else None) or {}
    return {key: summary.get(key, 0 if key in ("probes", "below_min") else math.nan) for key in SUMMARY}


def load_fidelity(dirs: Iterable[PathLike]) -> pd.DataFrame:
    """One row per run with the monitor on (EP, `train.fidelity_every` > 0 in its saved config), in the
    order given: its label, identity, phases, monitor settings and metrics.json's `fidelity` summary (0
    probes and NaN cosines when none ran, or the run has not ended)."""
    runs = _monitored(load_runs(dirs, KEYS)).rename(columns={k: k.split(".", 1)[1] for k in KEYS})
    if runs.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = runs.assign(run=_labels(runs))
    summaries = pd.DataFrame([_summary(d) for d in runs["run_dir"]], index=runs.index)
    return pd.concat([runs, summaries], axis=1)[RUN_COLUMNS].reset_index(drop=True)


def fidelity_history(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Long table, one row per epoch of each run of `runs` (`load_fidelity`): its label, phases and
    `train.fidelity_min`, the epoch's mean cosine with the converged gradient and the rest of its probes'
    figures (NaN in an epoch without a probe), and with `ep.recipe: auto` the sweep counts of the epoch.
    `history` is `load_history(...)` of (at least) the same runs."""
    if runs.empty or history.empty:
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    epochs = history.reindex(columns=["run_dir", "epoch", *HISTORY]).rename(columns=HISTORY)
    epochs["run_dir"] = epochs["run_dir"].astype(str)
    keys = runs[["run", "run_dir", *LABEL, "phases", "fidelity_min"]]
    table = keys.merge(epochs, on="run_dir", how="inner", validate="one_to_many")
    return table[EPOCH_COLUMNS].sort_values(["run", "epoch"], kind="stable").reset_index(drop=True)


def fidelity_table(runs: pd.DataFrame) -> pd.DataFrame:
    """`load_fidelity(...)`'s runs in a stable order (dataset, network, activation, recipe, seed, label)."""
    return runs.sort_values([*LABEL, "run"], kind="stable").reset_index(drop=True)


def fidelity_markdown(table: pd.DataFrame) -> str:
    probes = [f"{int(p)} (every {int(e)} steps)" for p, e in zip(table["probes"], table["fidelity_every"],
                                                                 strict=True)]  # fmt: skip
    below = [f"{int(b)} (< {m:g})" for b, m in zip(table["below_min"], table["fidelity_min"], strict=True)]
    seconds = [
        md.DASH if md.missing(s) else md.duration(s) + ("" if md.missing(f) else f" ({f:.1%})")
        for s, f in zip(table["seconds"], table["share_of_training"], strict=True)
    ]
    cells = pd.DataFrame(
        {
            "dataset": [label("dataset", v) for v in table["dataset"]],
            "network": [label("arch", v) for v in table["network"]],
            "activation": [label("activation", v) for v in table["activation"]],
            "seed": table["seed"].astype(str),
            "phases (free/nudged sweeps)": table["phases"],
            "probes": probes,
            "cosine: first": [md.number(v, 3) for v in table["cosine_first"]],
            "last": [md.number(v, 3) for v in table["cosine_last"]],
            "lowest": [md.number(v, 3) for v in table["cosine_min"]],
            "below min.": below,
            "monitor time": seconds,
        }
    )
    note = (
        "- *cosine*: of the run's gradient (its own phase lengths, on a fixed batch of "
        "`train.fidelity_batch` training examples) with the converged centered-EP gradient from the same "
        "weights; *first* / *last*: the mean of the first / last epoch with probes, *lowest*: the lowest "
        "probe. *below min.*: probes under `train.fidelity_min`. *monitor time*: the probes' seconds and "
        "their share of the training time. *phases*: free/nudged sweeps per step (*fast*: `ep.recipe: "
        "fast`; *auto ≤ F/N*: `ep.recipe: auto`, its sweeps chosen while training, at most F/N). A run "
        "that has not ended, or ran fewer steps than `train.fidelity_every`, has no probes.\n"
    )
    return md.to_markdown(cells) + "\n" + note


def write_fidelity_table(table: pd.DataFrame, csv_path: PathLike, md_path: PathLike) -> None:
    """Write `fidelity_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, Path(csv_path), Path(md_path), fidelity_markdown(table))


def _legend(ax: Axes, colors: dict[str, tuple], markers: dict[str, str], minima: list[float]) -> None:
    """One legend for both panels, outside the curves: colour = phases, marker = network, dashes = bar."""
    handles = [Line2D([], [], color=c, label=p) for p, c in colors.items()]
    handles += [
        Line2D([], [], color="0.3", marker=m, ls="", label=label("arch", n)) for n, m in markers.items()
    ]
    handles += [Line2D([], [], color="0.3", ls="--", lw=1, label=f"train.fidelity_min {m:g}") for m in minima]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def _lines(ax: Axes, epochs: pd.DataFrame, column: str, colors: dict, markers: dict) -> None:
    """One line per run of `column` against epoch, its epochs without a value left out."""
    for run, rows in epochs.dropna(subset=[column]).groupby("run", sort=True):
        first = rows.iloc[0]
        ax.plot(rows["epoch"], rows[column], color=colors[first["phases"]], marker=markers[first["network"]],
                markersize=4, lw=1.2, alpha=0.85, label=str(run))  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_fidelity(
    table: pd.DataFrame, epochs: pd.DataFrame, png: PathLike, pdf: PathLike | None = None
) -> None:
    """The cosine of each run's gradient with the converged centered-EP gradient against epoch (the mean of
    the epoch's probes), one line per run: colour its phases, marker its network; `train.fidelity_min`
    dashed. With `ep.recipe: auto` runs, a second panel: the free sweeps auto trained each epoch, the
    ladder's rungs as ticks. `table` is `fidelity_table(...)`, `epochs` `fidelity_history(...)`."""
    auto = table[table["recipe"] == "auto"]
    hues = sorted(set(table["phases"]))
    colors = dict(zip(hues, sns.color_palette(PALETTE, max(len(hues), 1)), strict=False))
    markers = dict(zip(sorted(set(table["network"])), "osD^vP*X<>phH8d" * 4, strict=False))
    minima = sorted(set(table["fidelity_min"].astype(float)))
    caption = (
        "Cosine of each run's gradient (its own phase lengths, on a fixed probe batch of training examples) "
        "with the converged centered-EP gradient from the same weights, the mean of the epoch's probes "
        "(every train.fidelity_every steps; an epoch without a probe has no point). Dashed: "
        "train.fidelity_min, under which the run warns."
    )
    if not auto.empty:
        caption += (
            " Right: the free sweeps ep.recipe: auto trained each epoch; ticks: its ladder (free/nudged)."
        )
    title = "Gradient fidelity during training"
    with figure(png, pdf, ncols=2 if len(auto) else 1, title=title, caption=caption) as (_, axes):
        ax = axes[0, 0]
        if epochs["cosine"].notna().any():
            _lines(ax, epochs, "cosine", colors, markers)
            for minimum in minima:
                ax.axhline(minimum, ls="--", lw=1, color="0.3")
            ax.set(xlabel="epoch", ylabel="cosine", ylim=(None, 1.005),
                   title="cosine with the converged CEP gradient")  # fmt: skip
        else:
            no_data(
                ax, f"{len(table)} monitored run(s), no probes yet" if len(table) else "no monitored runs"
            )
        if len(auto):
            _plot_auto(axes[0, 1], auto, epochs[epochs["run"].isin(auto["run"])], colors, markers)
        if len(table):
            _legend(axes[0, -1], colors, markers, minima)


def _plot_auto(ax: Axes, auto: pd.DataFrame, epochs: pd.DataFrame, colors: dict, markers: dict) -> None:
    """auto's free sweeps per epoch; y ticks: the rungs of its runs' ladders (free/nudged)."""
    if epochs["auto_free_iterations"].isna().all():
        no_data(ax, "no epoch of an auto run has ended")
        return
    _lines(ax, epochs, "auto_free_iterations", colors, markers)
    rungs: dict[int, str] = {}
    for r in auto.itertuples():
        for free, nudge in ladder((int(r.free_iterations), int(r.nudge_iterations)), int(r.auto_floor)):
            rungs.setdefault(free, f"{free}/{nudge}")
    low, high = min(rungs), max(rungs)
    pad = max(0.05 * (high - low), 0.5)  # the floor and the cap are rungs too: keep them off the frame
    ax.set_yticks(sorted(rungs), [rungs[f] for f in sorted(rungs)])
    ax.set_ylim(low - pad, high + pad)
    ax.set(xlabel="epoch", ylabel="sweeps (free/nudged)", title="sweeps chosen by ep.recipe: auto")
