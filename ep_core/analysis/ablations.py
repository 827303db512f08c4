"""The paper's two ablations: skip connections (Hopfield-ResNet13 vs the same net without its four skips) and
the clipped-ReLU cap (ReLU6 vs ReLU1 vs a random cap per layer).

Curves are the mean over seeds with a ±1 standard-deviation band, of completed runs only; a legend entry
says how many runs it averages and how many diverged or failed (not drawn). `ablation_table` states each
finding as a boolean computed by a fixed rule (documented on the function), with <NA> when a variant has no
completed run: the table never guesses.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from ..numerics.activations import PAPER_ACTIVATION
from ..training.rundir import COMPLETED, UNSUCCESSFUL
from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, grid_shape, hide_unused, no_data
from .runs import label, seed_stats

RESIDUAL_VARIANTS = ("hopfield_resnet13", "hopfield_plain13")
ACTIVATION_ORDER = ("relu6", "relu1", "relu_random")  # the paper's ranking, best first
EP_ALGORITHMS = ("cep", "ep")
METRIC_LABELS = {
    "train_loss": "training loss (mean per example)",
    "test_acc": "test accuracy (%)",
    "train_acc": "training accuracy (%)",
    "val_acc": "validation accuracy (%)",
}


def _counts_label(name: str, runs: pd.DataFrame) -> str:
    """'Hopfield-ResNet13 (3 runs; 1 diverged, not shown)' from one series' per-run statuses."""
    ok = int((runs["status"] == COMPLETED).sum())
    bad = int(runs["status"].isin(UNSUCCESSFUL).sum())
    text = f"{name} ({ok} run{'s' if ok != 1 else ''}"
    return text + (f"; {bad} diverged/failed, not shown)" if bad else ")")


def _setting_suffix(frame: pd.DataFrame) -> pd.Series:
    """' w=0.0625, 2 ep.' naming the width and planned epochs where the data mix them, so that curves of
    different settings (a smoke run and a full one) are never averaged together; else ''."""
    suffix = pd.Series("", index=frame.index)
    if frame["width"].nunique() > 1:
        suffix += " w=" + frame["width"].map(lambda w: f"{w:g}")
    if frame["epochs_planned"].nunique() > 1:
        suffix += " " + frame["epochs_planned"].map(lambda e: f"{e} ep.")
    return suffix


def _draw_series(ax, frame: pd.DataFrame, metric: str, variant: str, colors: dict[str, tuple]) -> None:
    """Mean ± s.d. over completed runs of `metric` vs epoch, one line per series (a variant, plus the
    setting where the data mix settings), coloured by variant so that panels agree."""
    runs = frame.drop_duplicates("run_dir")
    order = sorted(
        runs["series"].unique(), key=lambda s: (list(colors).index(_variant_of(runs, s, variant)), s)
    )
    names = {s: _counts_label(s, runs[runs["series"] == s]) for s in order}
    palette = {names[s]: colors[_variant_of(runs, s, variant)] for s in order}
    done = frame[frame["status"] == COMPLETED].assign(series=lambda f: f["series"].map(names))
    if done.empty:
        no_data(ax, "no completed runs:\n" + "\n".join(names.values()))
        return
    hue_order = [names[s] for s in order if names[s] in set(done["series"])]
    sns.lineplot(
        done, x="epoch", y=metric, hue="series", hue_order=hue_order, errorbar="sd", estimator="mean",
        palette=palette, ax=ax, marker="o" if done["epoch"].nunique() < 15 else None, markersize=4,
    )  # fmt: skip
    ax.legend(title=None, loc="best")


def _variant_of(runs: pd.DataFrame, series: str, variant: str) -> str:
    return runs.loc[runs["series"] == series, variant].iloc[0]


def residual_ablation_data(history: pd.DataFrame, *, activation: str = PAPER_ACTIVATION) -> pd.DataFrame:
    """Epoch rows of EP runs of Hopfield-ResNet13 and Hopfield-Plain13 with the given activation."""
    keep = (
        history["table_arch"].isin(RESIDUAL_VARIANTS)
        & history["algorithm"].isin(EP_ALGORITHMS)
        & (history["activation"] == activation)
    )
    return history[keep]


def _activation_study(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows of EP runs with one of the three activations, of the groups `by` trained with at least two of
    them (the others have nothing to compare: the residual ablation's ReLU6-only nets, say)."""
    keep = frame["algorithm"].isin(EP_ALGORITHMS) & frame["activation"].isin(ACTIVATION_ORDER)
    data = frame[keep]
    kinds = data.groupby(by)["activation"].transform("nunique")
    return data[kinds >= 2]


def activation_ablation_data(history: pd.DataFrame) -> pd.DataFrame:
    """Epoch rows of the activation study, per (dataset, architecture) pair (`_activation_study`)."""
    return _activation_study(history, ["dataset", "table_arch"])


def plot_residual_ablation(
    history: pd.DataFrame,
    png: PathLike,
    pdf: PathLike | None = None,
    *,
    metric: str = "train_loss",
    activation: str = PAPER_ACTIVATION,
) -> None:
    """Training loss vs epoch, Hopfield-ResNet13 against Hopfield-Plain13, one panel per dataset (and EP
    estimator). `history` is `load_history(...)`; writes `png` and `pdf` (default: same stem)."""
    data = residual_ablation_data(history, activation=activation)
    data = data.assign(series=lambda f: f["table_arch"].map(lambda a: label("arch", a)) + _setting_suffix(f))
    panels = sorted(data.groupby(["dataset", "algorithm"]).groups) if not data.empty else [None]
    colors = dict(zip(RESIDUAL_VARIANTS, sns.color_palette(PALETTE, 2), strict=True))
    caption = (
        f"EP-trained networks ({activation}); mean over seeds, band ±1 s.d. Hopfield-Plain13 is "
        "Hopfield-ResNet13 without its four 1×1 skip couplings. The paper: without skips the training "
        "loss stays flat."
    )
    title = "Residual ablation: training loss"
    with figure(png, pdf, ncols=len(panels), title=title, caption=caption) as (_, axes):
        for ax, key in zip(axes.flat, panels, strict=True):
            if key is None:
                no_data(ax, f"no EP runs of {' / '.join(label('arch', a) for a in RESIDUAL_VARIANTS)}")
                continue
            dataset, algorithm = key
            frame = data[(data["dataset"] == dataset) & (data["algorithm"] == algorithm)]
            _draw_series(ax, frame, metric, "table_arch", colors)
            ylabel = METRIC_LABELS.get(metric, metric)
            ax.set(
                title=f"{label('dataset', dataset)}, {label('algorithm', algorithm)}",
                xlabel="epoch",
                ylabel=ylabel,
            )


def plot_activation_ablation(
    history: pd.DataFrame, png: PathLike, pdf: PathLike | None = None, *, metric: str = "test_acc"
) -> None:
    """Test accuracy vs epoch per activation (ReLU6, ReLU1, random α), one panel per dataset × EP
    architecture trained with at least two activations. `history` is `load_history(...)`; writes `png`
    and `pdf` (default: same stem)."""
    data = activation_ablation_data(history)
    data = data.assign(
        series=lambda f: f["activation"].map(lambda a: label("activation", a)) + _setting_suffix(f)
    )
    panels = sorted(data.groupby(["dataset", "table_arch"]).groups) if not data.empty else [None]
    colors = dict(zip(ACTIVATION_ORDER, sns.color_palette(PALETTE, 3), strict=True))
    nrows, ncols = grid_shape(len(panels), max_columns=3)
    caption = (
        "EP-trained networks; mean over seeds, band ±1 s.d. ReLU_α(x) = min(max(x, 0), α); random α: one cap "
        "per layer, drawn once. The paper's ranking: ReLU6 > ReLU1 > random α."
    )
    title = "Activation ablation"
    with figure(png, pdf, nrows=nrows, ncols=ncols, title=title, caption=caption) as (_, axes):
        for ax, key in zip(axes.flat, panels, strict=False):
            if key is None:
                names = " / ".join(label("activation", a) for a in ACTIVATION_ORDER)
                no_data(ax, f"no EP architecture was trained\nwith two or more of {names}")
                continue
            dataset, arch = key
            frame = data[(data["dataset"] == dataset) & (data["table_arch"] == arch)]
            _draw_series(ax, frame, metric, "activation", colors)
            ylabel = METRIC_LABELS.get(metric, metric)
            ax.set(title=f"{label('dataset', dataset)}, {label('arch', arch)}", xlabel="epoch", ylabel=ylabel)
        hide_unused(axes, len(panels))


# --- the table --------------------------------------------------------------------------------------------


def loss_drop(history: pd.DataFrame) -> pd.Series:
    """Per run: (training loss of epoch 1 − the lowest over epochs) / (of epoch 1); 0 for a one-epoch run.
    The lowest, not the last: a net that trained and then became unstable did not stall."""
    ordered = history.sort_values(["run_dir", "epoch"])
    first = ordered.groupby("run_dir")["train_loss"].first()
    lowest = ordered.groupby("run_dir")["train_loss"].min()
    return ((first - lowest) / first).rename("train_loss_drop")


def _variant_rows(runs: pd.DataFrame, keys: list[str], variant: str) -> pd.DataFrame:
    stats = ("final_test_acc", "best_test_acc", "final_train_loss", "train_loss_drop")
    return seed_stats(runs, [*keys, variant], stats)


def ablation_table(
    runs: pd.DataFrame, history: pd.DataFrame, *, metric: str = "final_test_acc", stall_drop: float = 0.05
) -> pd.DataFrame:
    """Final numbers of both ablations, one row per variant, with the finding of its group.

    `runs` is `load_runs(...)`, `history` `load_history(...)` of the same runs. Rules (means over completed
    runs of one dataset, EP estimator, width and number of epochs):

    * residual: holds when Hopfield-Plain13's training loss fell by at most `stall_drop` (relative, from
      epoch 1 to its lowest) while Hopfield-ResNet13's fell by more — "plain stalls, skips train";
    * activation (per architecture): holds when mean `metric` is ReLU6 > ReLU1 > random α.

    <NA> when a variant of the group has no completed run. Columns: ablation, dataset, algorithm, width,
    epochs, architecture, variant, n, n_failed, n_dead, {final_test_acc,best_test_acc,final_train_loss,
    train_loss_drop}_{mean,std}, finding, holds.
    """
    runs = runs.join(loss_drop(history), on="run_dir")
    ep = runs[runs["algorithm"].isin(EP_ALGORITHMS)].rename(columns={"epochs_planned": "epochs_"})
    keys = ["dataset", "algorithm", "width", "epochs_"]

    residual = ep[ep["table_arch"].isin(RESIDUAL_VARIANTS) & (ep["activation"] == PAPER_ACTIVATION)]
    residual = _variant_rows(residual, keys, "table_arch").rename(columns={"table_arch": "variant"})
    residual = residual.assign(ablation="residual", architecture=residual["variant"])
    residual["finding"] = (
        f"plain stalls (loss drop ≤ {stall_drop:.0%}), skips train (drop > {stall_drop:.0%})"
    )
    residual["holds"] = pd.array([pd.NA] * len(residual), dtype="boolean")
    for _, group in residual.groupby(keys):
        drop = dict(zip(group["variant"], group["train_loss_drop_mean"], strict=True))
        n = dict(zip(group["variant"], group["n"], strict=True))
        if all(n.get(v, 0) > 0 for v in RESIDUAL_VARIANTS):
            residual.loc[group.index, "holds"] = bool(
                drop["hopfield_plain13"] <= stall_drop < drop["hopfield_resnet13"]
            )

    activation = _activation_study(ep, [*keys, "table_arch"])
    activation = _variant_rows(activation, [*keys, "table_arch"], "activation")
    activation = activation.rename(columns={"activation": "variant", "table_arch": "architecture"})
    activation = activation.assign(ablation="activation", finding=f"relu6 > relu1 > relu_random ({metric})")
    activation["holds"] = pd.array([pd.NA] * len(activation), dtype="boolean")
    for _, group in activation.groupby([*keys, "architecture"]):
        value = dict(zip(group["variant"], group[f"{metric}_mean"], strict=True))
        n = dict(zip(group["variant"], group["n"], strict=True))
        if all(n.get(v, 0) > 0 for v in ACTIVATION_ORDER):
            activation.loc[group.index, "holds"] = bool(
                value["relu6"] > value["relu1"] > value["relu_random"]
            )

    table = pd.concat([residual, activation], ignore_index=True).rename(columns={"epochs_": "epochs"})
    first = ["ablation", "dataset", "algorithm", "width", "epochs", "architecture", "variant"]
    table = table[[*first, *(c for c in table.columns if c not in first)]]
    rank = {v: i for i, v in enumerate(("residual", "activation", *RESIDUAL_VARIANTS, *ACTIVATION_ORDER))}
    table = table.sort_values(
        ["ablation", "dataset", "algorithm", "width", "epochs", "architecture", "variant"],
        key=lambda c: c.map(rank) if c.name in ("ablation", "variant") else c,
        kind="stable",
    )
    return table.reset_index(drop=True)


def ablation_markdown(table: pd.DataFrame) -> str:
    cells = pd.DataFrame(
        {
            "ablation": table["ablation"],
            "dataset": [label("dataset", v) for v in table["dataset"]],
            "algorithm": [label("algorithm", v) for v in table["algorithm"]],
            "width": [f"{v:g}" for v in table["width"]],
            "epochs": table["epochs"].astype(str),
            "architecture": [label("arch", v) for v in table["architecture"]],
            "variant": [
                label("activation" if a == "activation" else "arch", v)
                for a, v in zip(table["ablation"], table["variant"], strict=True)
            ],
            "runs": md.runs_cells(table),
            "final test acc. (%)": md.mean_std_cells(table, "final_test_acc"),
            "best test acc. (%)": md.mean_std_cells(table, "best_test_acc"),
            "final train loss": md.mean_std_cells(table, "final_train_loss", 4),
            "train-loss drop": [
                md.DASH if md.missing(v) else f"{v:.1%}" for v in table["train_loss_drop_mean"]
            ],
            "finding": table["finding"],
            "holds": [md.flag(v) for v in table["holds"]],
        }
    )
    note = (
        "- *train-loss drop*: (loss of epoch 1 − lowest loss over epochs) / loss of epoch 1, mean over "
        "completed runs. *holds*: the finding's rule on these means (– when a variant has no completed "
        "run).\n"
    )
    return md.to_markdown(cells) + "\n" + note + md.RUNS_NOTE


def write_ablation_table(table: pd.DataFrame, csv_path: PathLike, md_path: PathLike) -> None:
    """Write `ablation_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, Path(csv_path), Path(md_path), ablation_markdown(table))
