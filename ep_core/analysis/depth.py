"""The depth study: Hopfield-ResNets of several depths, with and without their skip couplings, trained.

The paper's central claim is that residual couplings let EP train nearly twice as many layers. For every
(dataset, EP estimator, width, epochs) the table gives, per depth and variant, the final test accuracy and
the training-loss drop (epoch 1 to the lowest loss, relative) as mean ± s.d. over completed runs; the figure
draws both against the number of weight layers, skip vs no-skip, seeds as error bars.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, grid_shape, hide_unused, no_data
from .ablations import EP_ALGORITHMS, loss_drop
from .runs import label, seed_stats

GROUP = ["dataset", "algorithm", "width", "epochs"]
VARIANTS = {True: "with skips (Hopfield-ResNet)", False: "no skips (Hopfield-Plain)"}
STATS = ("final_test_acc", "best_test_acc", "train_loss_drop")


def depth_table(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, algorithm, width, epochs, skips, blocks) of the Hopfield-ResNet family's EP
    runs: layers, network, n, n_failed, n_dead (`runs.status_counts`) and {final_test_acc, best_test_acc,
    train_loss_drop}_{mean,std}. `runs` is `load_runs(...)`, `history` `load_history(...)` of the same
    runs."""
    runs = runs.join(loss_drop(history), on="run_dir")
    family = runs[runs["algorithm"].isin(EP_ALGORITHMS) & runs["blocks"].notna()]
    family = family.rename(columns={"epochs": "epochs_completed", "epochs_planned": "epochs"})
    keys = [*GROUP, "skips", "blocks", "depth", "network"]
    table = seed_stats(family, keys, STATS)
    if table.empty:
        return table
    table = table.astype({"blocks": int, "depth": int, "skips": bool})
    table = table.sort_values([*GROUP, "skips", "blocks"], ascending=[True] * 4 + [False, True])
    return table.reset_index(drop=True)


def depth_markdown(table: pd.DataFrame) -> str:
    cells = pd.DataFrame(
        {
            "dataset": [label("dataset", v) for v in table["dataset"]],
            "algorithm": [label("algorithm", v) for v in table["algorithm"]],
            "width": [f"{v:g}" for v in table["width"]],
            "epochs": table["epochs"].astype(str),
            "network": [label("arch", v) for v in table["network"]],
            "weight layers": table["depth"].astype(str),
            "skips": ["yes" if v else "no" for v in table["skips"]],
            "runs": md.runs_cells(table),
            "final test acc. (%)": md.mean_std_cells(table, "final_test_acc"),
            "train-loss drop": [
                md.DASH if md.missing(m) else f"{m:.1%}" + ("" if md.missing(s) else f" ± {s:.1%}")
                for m, s in zip(table["train_loss_drop_mean"], table["train_loss_drop_std"], strict=True)
            ],
        }
    )
    note = (
        "- *weight layers*: as the paper counts them (3 per block + the dense head; the no-skip network of "
        "the same name lacks the blocks' 1×1 skips). *train-loss drop*: (loss of epoch 1 − lowest loss) / "
        "loss of epoch 1. Means ± s.d. over completed runs (seeds).\n"
    )
    return md.to_markdown(cells) + "\n" + note + md.RUNS_NOTE


def write_depth_table(table: pd.DataFrame, csv_path: PathLike, md_path: PathLike) -> None:
    """Write `depth_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, Path(csv_path), Path(md_path), depth_markdown(table))


def plot_depth_ablation(table: pd.DataFrame, png: PathLike, pdf: PathLike | None = None) -> None:
    """Final test accuracy and training-loss drop against weight layers, with vs without skips, one row of
    two panels per (dataset, algorithm, width, epochs); error bars ±1 s.d. over seeds. `table` is
    `depth_table(...)`."""
    groups = sorted(table.groupby(GROUP).groups) if not table.empty else [None]
    nrows, _ = grid_shape(len(groups), max_columns=1)
    colors = dict(zip(VARIANTS, sns.color_palette(PALETTE, 2), strict=True))
    caption = (
        "EP-trained Hopfield-ResNets of each depth, with and without their 1×1 skip couplings (weight layers "
        "as the paper counts them: 3 per block + the dense head). Points: mean over completed runs (seeds), "
        "error bars ±1 s.d.; train-loss drop = (loss of epoch 1 − lowest loss) / loss of epoch 1. The paper: "
        "skips let EP train nearly twice as many layers (without them the loss stays flat)."
    )
    panels = (("final_test_acc", "final test accuracy (%)"), ("train_loss_drop", "training-loss drop"))
    title = "Depth study: with vs without skip couplings"
    with figure(png, pdf, nrows=nrows, ncols=2, title=title, caption=caption) as (_, axes):
        for row, key in zip(axes, groups, strict=True):
            if key is None:
                for ax in row:
                    no_data(ax, "no EP runs of the Hopfield-ResNet family")
                continue
            rows = table.set_index(GROUP).loc[[key]].reset_index()
            dataset, algorithm, width, epochs = key
            for ax, (stat, ylabel) in zip(row, panels, strict=True):
                for skips, name in VARIANTS.items():
                    points = rows[(rows["skips"] == skips) & (rows["n"] > 0)]
                    if points.empty:
                        continue
                    ax.errorbar(points["depth"], points[f"{stat}_mean"], yerr=points[f"{stat}_std"].fillna(0),
                                marker="o", capsize=3, color=colors[skips], label=name)  # fmt: skip
                if not ax.lines:
                    no_data(ax, "no completed runs")
                    continue
                ax.set_xticks(sorted(rows["depth"].unique()))
                ax.set(xlabel="weight layers", ylabel=ylabel,
                       title=f"{label('dataset', dataset)}, {label('algorithm', algorithm)}, w={width:g}, "
                             f"{epochs} ep.")  # fmt: skip
                if stat == "train_loss_drop":
                    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
                ax.legend(loc="best")
        hide_unused(axes, 2 * len(groups))
