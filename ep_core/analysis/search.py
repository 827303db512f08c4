"""Hyper-parameter searches: the same network trained at every combination of a few settings (`ep.beta`,
`optim.lr`, ...), and the best setting chosen on validation.

Per (dataset, network, algorithm, width, epochs), each setting's runs give the best validation accuracy over
epochs and the test accuracy at that epoch (mean ± s.d. over completed runs, i.e. seeds). The chosen setting
is the one with the highest mean validation accuracy — never the test accuracy — and its test accuracy is
what the search reports. Runs need a validation split (`data.val_size` > 0; the grid refuses a search
without one).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, no_data
from .runs import label, seed_stats

GROUP = ["dataset", "network", "algorithm", "width", "epochs"]
STATS = ("best_val_acc", "val_selected_test_acc", "final_test_acc")


def search_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per (dataset, network, algorithm, width, epochs, *keys) setting: n, n_failed, n_dead,
    {best_val_acc, val_selected_test_acc, final_test_acc}_{mean,std} and `chosen` (highest mean validation
    accuracy of its group). `runs` is `load_runs(dirs, keys)`."""
    runs = runs.rename(columns={"epochs": "epochs_completed", "epochs_planned": "epochs"})
    if not keys:
        raise ValueError("search_table: name the searched keys (e.g. ['ep.beta'])")
    table = seed_stats(runs, [*GROUP, *keys], STATS)
    chosen = table.dropna(subset=["best_val_acc_mean"]).groupby(GROUP)["best_val_acc_mean"].idxmax()
    table["chosen"] = table.index.isin(chosen.to_numpy())
    return table.sort_values([*GROUP, *keys], kind="stable").reset_index(drop=True)


def _setting(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k} = {row[k]:g}" if isinstance(row[k], float) else f"{k} = {row[k]}" for k in keys)


def search_markdown(table: pd.DataFrame, keys: list[str]) -> str:
    cells = pd.DataFrame(
        {
            "dataset": [label("dataset", v) for v in table["dataset"]],
            "network": [label("arch", v) for v in table["network"]],
            "algorithm": [label("algorithm", v) for v in table["algorithm"]],
            "width": [f"{v:g}" for v in table["width"]],
            "epochs": table["epochs"].astype(str),
            "setting": [_setting(r, keys) for _, r in table.iterrows()],
            "runs": md.runs_cells(table),
            **{
                heading: md.mean_std_cells(table, stat)
                for stat, heading in (
                    ("best_val_acc", "best validation acc. (%)"),
                    ("val_selected_test_acc", "test acc. at that epoch (%)"),
                    ("final_test_acc", "final test acc. (%)"),
                )
            },
            "chosen": ["**chosen**" if c else "" for c in table["chosen"]],
        }
    )
    note = (
        "- The chosen setting has the highest mean validation accuracy (best epoch) of its network; its "
        "*test acc. at that epoch* is the search's result (selected on validation, never on test). Means ± "
        "s.d. over completed runs (seeds).\n"
    )
    return md.to_markdown(cells) + "\n" + note + md.RUNS_NOTE


def write_search_table(table: pd.DataFrame, keys: list[str], csv_path: PathLike, md_path: PathLike) -> None:
    """Write `search_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, Path(csv_path), Path(md_path), search_markdown(table, keys))


def plot_search(table: pd.DataFrame, keys: list[str], png: PathLike, pdf: PathLike | None = None) -> None:
    """Sensitivity: validation accuracy (top) and the test accuracy at the best-validation epoch (bottom)
    against each searched key (one column per key), one line per network and setting of the other keys;
    error bars ±1 s.d. over seeds, a star on the chosen setting. `table` is `search_table(...)`."""
    keys = keys or [None]  # type: ignore[list-item]
    caption = (
        "Each point: one setting, mean over completed runs (seeds), error bars ±1 s.d. Top: best validation "
        "accuracy over epochs; bottom: test accuracy at that epoch. Star: the setting chosen on validation "
        "(highest mean validation accuracy of its network). Lines join settings that differ only in the "
        "key on the x axis."
    )
    rows = (
        ("best_val_acc", "best validation accuracy (%)"),
        ("val_selected_test_acc", "test acc. (%), val-selected"),
    )
    with figure(png, pdf, nrows=2, ncols=len(keys), title="Search sensitivity", caption=caption) as (_, axes):
        for column, key in enumerate(keys):
            done = table[table["n"] > 0] if key is not None else table.iloc[0:0]
            others = [k for k in keys if k != key]
            series = done[GROUP + others].astype(str).agg(" ".join, axis=1) if not done.empty else pd.Series()
            names = sorted(series.unique()) if not done.empty else []
            colors = dict(zip(names, sns.color_palette(PALETTE, max(len(names), 1)), strict=False))
            for (stat, ylabel), ax in zip(rows, axes[:, column], strict=True):
                if done.empty:
                    no_data(ax, "no completed search runs")
                    continue
                for name in names:
                    points = done[series == name].sort_values(key)
                    first = points.iloc[0]
                    text = f"{label('arch', first['network'])}, {label('dataset', first['dataset'])}"
                    text += "".join(f", {k}={first[k]}" for k in others)
                    ax.errorbar(points[key], points[f"{stat}_mean"], yerr=points[f"{stat}_std"].fillna(0),
                                marker="o", capsize=3, color=colors[name], label=text)  # fmt: skip
                    chosen = points[points["chosen"]]
                    ax.scatter(chosen[key], chosen[f"{stat}_mean"], marker="*", s=160, color=colors[name],
                               edgecolor="black", zorder=5)  # fmt: skip
                if pd.api.types.is_numeric_dtype(done[key]) and (done[key] > 0).all():
                    values = sorted(done[key].unique())
                    if len(values) > 2 and values[-1] / values[0] >= 4:
                        ax.set_xscale("log", base=2)
                    ax.set_xticks(values, [f"{v:g}" for v in values])
                ax.set(xlabel=key, ylabel=ylabel)
                ax.legend(loc="best", fontsize=7)
