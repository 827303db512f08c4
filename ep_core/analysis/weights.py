"""Trained weights, EP vs BP on the same graph, and the paper's three findings about them:

1. CEP-trained weights are smaller in magnitude and in spread than BP-trained ones;
2. the deeper the layer, the closer its weights sit to zero;
3. the skip (1×1) kernels have a much smaller fraction of near-zero weights than the main-path kernels.

Only weight matrices count (conv kernels and dense weights: tensors with two or more dimensions), so biases
and BatchNorm parameters never enter a comparison. A weight is a *skip* if it is a 4-D kernel of size 1×1,
*dense* if 2-D, else *main*. Layers are matched EP↔BP by rank in depth order within their role (the i-th
main-path matrix of one with the i-th of the other; skips likewise): both networks list their main-path
weights in depth order (the EP net interleaves skips differently, which matching within roles ignores).
Block j's skip feeds the same layer as block j's second conv, so it is drawn at that depth (2j).

"Near zero" is |w| < f·rms₀ with rms₀ the tensor's RMS at initialisation (`weights_summary.csv`'s
frac_below_{f}_init), a scale-free measure: the skip kernels start ~3.5× larger than the 3×3 kernels
(gain / √fan_in), so an absolute threshold would favour finding 3 by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from ..numerics.activations import PAPER_ACTIVATION
from ..training.rundir import COMPLETED
from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, grid_shape, hide_unused, no_data
from .runs import label, read_run

GRAPH = {"hopfield_resnet13": "resnet13", "resnet13": "resnet13", "vgg5": "vgg5"}  # table_arch -> graph
NEAR_ZERO = "frac_below_0.1_init"
GROUP = ["dataset", "graph", "width"]
ROLE_ORDER = {"main": 0, "dense": 0, "skip": 1}
SUMMARY_COLUMNS = ["name", "kind", "shape", "numel", "mean", "std", "mean_abs", "max_abs", "init_rms",
                   "frac_below_0.001_init", "frac_below_0.01_init", "frac_below_0.1_init"]  # fmt: skip
DERIVED = ["role", "kernel", "index", "depth", "layer"]
IDENTITY = ("run_dir", "dataset", "arch", "network", "table_arch", "algorithm", "activation", "width", "seed")


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).split("x") if v)


def weight_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The weight matrices of one weights_summary.csv, with role, rank within role, depth and kernel."""
    shapes = summary["shape"].map(_shape)
    rows = summary[(summary["kind"] == "weight") & (shapes.map(len) >= 2)].copy()
    shapes = shapes[rows.index]
    rows["role"] = [
        "dense" if len(s) == 2 else ("skip" if len(s) == 4 and s[2:] == (1, 1) else "main") for s in shapes
    ]
    rows["kernel"] = ["dense" if len(s) == 2 else f"{s[2]}×{s[3]}" for s in shapes]
    is_skip = rows["role"] == "skip"
    rows["index"] = 0
    rows.loc[~is_skip, "index"] = np.arange(1, int((~is_skip).sum()) + 1)  # main path, dense head last
    rows.loc[is_skip, "index"] = np.arange(1, int(is_skip.sum()) + 1)
    rows["depth"] = np.where(is_skip, 2 * rows["index"], rows["index"])
    rows["layer"] = [
        f"skip {i}" if r == "skip" else f"layer {i}" for r, i in zip(rows["role"], rows["index"], strict=True)
    ]
    return rows.reset_index(drop=True)


def load_weights(dirs: Iterable[PathLike]) -> pd.DataFrame:
    """Weight-matrix rows of every completed run's weights_summary.csv, with the run's identity (run_dir,
    dataset, arch, table_arch, algorithm, activation, width, seed) and its `graph` (resnet13 / vgg5 for both
    the EP net and its BP twin)."""
    frames = []
    for d in dirs:
        run = read_run(d)
        path = Path(d) / "weights_summary.csv"
        if run["status"] != COMPLETED or not path.is_file():
            continue
        rows = weight_rows(pd.read_csv(path))
        identity = {k: run[k] for k in IDENTITY}
        frames.append(rows.assign(**identity, graph=GRAPH.get(run["table_arch"], run["table_arch"])))
    if not frames:
        return pd.DataFrame(columns=[*SUMMARY_COLUMNS, *DERIVED, *IDENTITY, "graph"])
    return pd.concat(frames, ignore_index=True)


def _is_ep(frame: pd.DataFrame) -> pd.Series:
    return frame["algorithm"] != "bp"


def comparable(weights: pd.DataFrame, activation: str = PAPER_ACTIVATION) -> pd.DataFrame:
    """BP runs and the EP runs with `activation` (the paper's ReLU6): runs with other caps (an ablation's, a
    main study's ReLU1) train other weights and would blur the EP side."""
    return weights[~_is_ep(weights) | (weights["activation"] == activation)]


def weight_layers(
    weights: pd.DataFrame, *, near_zero: str = NEAR_ZERO, activation: str = PAPER_ACTIVATION
) -> pd.DataFrame:
    """Per matched layer (dataset, graph, width, role, index): EP and BP mean |w|, std, near-zero fraction
    and RMS at initialisation, each the mean over that side's runs (seeds; EP runs with `activation` only),
    with both names and the depth."""
    weights = comparable(weights, activation)
    stats = {"mean_abs": "mean_abs", "std": "std", "near_zero": near_zero, "init_rms": "init_rms"}
    sides = []
    for side, frame in (("ep", weights[_is_ep(weights)]), ("bp", weights[~_is_ep(weights)])):
        agg = frame.groupby([*GROUP, "role", "index"]).agg(
            **{f"{side}_{k}": (v, "mean") for k, v in stats.items()},
            **{f"{side}_name": ("name", "first"), f"{side}_runs": ("run_dir", "nunique")},
            depth=("depth", "first"),
            kernel=("kernel", "first"),
        )
        sides.append(agg)
    ep, bp = sides
    layers = ep.join(bp.drop(columns=["depth", "kernel"]), how="outer")
    layers["depth"] = layers["depth"].fillna(bp["depth"])
    layers["kernel"] = layers["kernel"].fillna(bp["kernel"])
    layers = layers.reset_index().sort_values([*GROUP, "depth", "role"], key=_role_key, kind="stable")
    return layers.reset_index(drop=True)


def _role_key(column: pd.Series) -> pd.Series:
    return column.map(ROLE_ORDER) if column.name == "role" else column


def _spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rank correlation (Pearson on ranks; no SciPy needed). NaN for < 3 points or a constant."""
    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return float("nan")
    rx, ry = x[ok].rank(), y[ok].rank()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _pooled(frame: pd.DataFrame) -> tuple[float, float, float]:
    """Mean |w|, standard deviation and RMS at initialisation over all weights of the matrices of one run
    (numel-weighted)."""
    n = frame["numel"].astype(float)
    mean_abs = float((n * frame["mean_abs"]).sum() / n.sum())
    mean = float((n * frame["mean"]).sum() / n.sum())
    second = float((n * (frame["std"] ** 2 + frame["mean"] ** 2)).sum() / n.sum())
    init_rms = float(np.sqrt((n * frame["init_rms"] ** 2).sum() / n.sum()))
    return mean_abs, float(np.sqrt(max(second - mean**2, 0.0))), init_rms


def _side(frame: pd.DataFrame) -> tuple[float, float, float]:
    """`_pooled` averaged over the runs (seeds) of one side; NaNs without runs."""
    if frame.empty:
        return (np.nan, np.nan, np.nan)
    mean_abs, std, init_rms = np.mean([_pooled(run) for _, run in frame.groupby("run_dir")], axis=0)
    return float(mean_abs), float(std), float(init_rms)


def _less(a: float, b: float) -> object:
    """a < b, or <NA> when either is unknown."""
    return pd.NA if np.isnan(a) or np.isnan(b) else bool(a < b)


def _share_smaller(matched: pd.DataFrame, column: str) -> float:
    """The share of matched layers where EP's `column` is below BP's."""
    return float((matched[f"ep_{column}"] < matched[f"bp_{column}"]).mean()) if len(matched) else np.nan


FINDINGS = ("ep_smaller_magnitude", "ep_smaller_spread", "deeper_closer_to_zero", "skip_fewer_near_zero")
CONTROLS = ("ep_smaller_at_init", "deeper_shrank_more")


def _findings(key: tuple, weights: pd.DataFrame, layers: pd.DataFrame, near_zero: str) -> dict:
    ep, bp = weights[_is_ep(weights)], weights[~_is_ep(weights)]
    (ep_abs, ep_std, ep_init), (bp_abs, bp_std, bp_init) = _side(ep), _side(bp)
    matched = layers.dropna(subset=["ep_mean_abs", "bp_mean_abs"])
    main, skip = layers[layers["role"] == "main"], layers[layers["role"] == "skip"]
    rho_abs = _spearman(main["depth"], main["ep_mean_abs"])
    rho_rel = _spearman(main["depth"], main["ep_mean_abs"] / main["ep_init_rms"])
    skip_zero = skip["ep_near_zero"].mean() if len(skip) else np.nan
    main_zero = main["ep_near_zero"].mean() if len(main) else np.nan
    return {
        **dict(zip(GROUP, key, strict=True)),
        "ep_arch": ",".join(sorted(ep["network"].unique())),
        "bp_arch": ",".join(sorted(bp["network"].unique())),
        "ep_runs": ep["run_dir"].nunique(),
        "bp_runs": bp["run_dir"].nunique(),
        # 1. magnitude and spread, EP vs BP
        "ep_pooled_mean_abs": ep_abs,
        "bp_pooled_mean_abs": bp_abs,
        "ep_pooled_std": ep_std,
        "bp_pooled_std": bp_std,
        "ep_smaller_magnitude": _less(ep_abs, bp_abs),
        "ep_smaller_spread": _less(ep_std, bp_std),
        "frac_layers_ep_smaller_magnitude": _share_smaller(matched, "mean_abs"),
        "frac_layers_ep_smaller_std": _share_smaller(matched, "std"),
        # control: were the EP weights smaller already at initialisation?
        "ep_pooled_init_rms": ep_init,
        "bp_pooled_init_rms": bp_init,
        "ep_smaller_at_init": _less(ep_init, bp_init),
        # 2. depth
        "depth_rho_mean_abs": rho_abs,
        "deeper_closer_to_zero": _less(rho_abs, 0.0),
        "depth_rho_near_zero": _spearman(main["depth"], main["ep_near_zero"]),
        # control: did training, not the initial scale gain/sqrt(fan_in), make deeper layers smaller?
        "depth_rho_mean_abs_over_init": rho_rel,
        "deeper_shrank_more": _less(rho_rel, 0.0),
        # 3. skip vs main-path kernels
        "near_zero_measure": near_zero,
        "ep_skip_near_zero": skip_zero,
        "ep_main_near_zero": main_zero,
        "skip_fewer_near_zero": _less(skip_zero, main_zero),
    }


def weight_table(
    weights: pd.DataFrame, *, near_zero: str = NEAR_ZERO, activation: str = PAPER_ACTIVATION
) -> pd.DataFrame:
    """The three findings per (dataset, graph, width), as numbers and booleans (<NA>: not decidable here).
    `weights` is `load_weights(...)`; EP runs with another `activation` than the paper's are left out.

    1. ep_smaller_magnitude / ep_smaller_spread: pooled mean |w| / standard deviation over all weight
       matrices (mean over seeds), EP < BP; frac_layers_ep_smaller_*: the share of matched layers where it
       holds layer by layer. Control ep_smaller_at_init: the pooled RMS at initialisation, EP < BP.
    2. deeper_closer_to_zero: Spearman ρ(depth, mean |w|) < 0 over the EP main-path conv kernels (dense
       head excluded). Control deeper_shrank_more: the same for mean |w| / RMS at initialisation, since
       the initial scale gain/√fan_in already shrinks with depth.
    3. skip_fewer_near_zero: the EP skip kernels' mean near-zero fraction < the main-path conv kernels'.
    """
    weights = comparable(weights, activation)
    layers = weight_layers(weights, near_zero=near_zero, activation=activation)
    rows = []
    for key, group in weights.groupby(GROUP):
        mine = (layers[GROUP] == pd.Series(key, index=GROUP)).all(axis=1)
        rows.append(_findings(key, group, layers[mine], near_zero))
    # an empty input still gives the table's columns
    columns = list(_findings((None,) * len(GROUP), weights.iloc[0:0], layers.iloc[0:0], near_zero))
    table = pd.DataFrame(rows, columns=columns)
    for column in (*FINDINGS, *CONTROLS):
        if column in table:
            table[column] = table[column].astype("boolean")
    return table


def weight_markdown(table: pd.DataFrame) -> str:
    cells = pd.DataFrame(
        {
            "dataset": [label("dataset", v) for v in table["dataset"]],
            "graph (EP / BP)": [
                " / ".join(", ".join(label("arch", n) for n in side.split(",")) for side in (e, b) if side)
                for e, b in zip(table["ep_arch"], table["bp_arch"], strict=True)
            ],
            "width": [f"{w:g}" for w in table["width"]],
            "runs EP / BP": [f"{e} / {b}" for e, b in zip(table["ep_runs"], table["bp_runs"], strict=True)],
            "mean |w| EP / BP": [
                f"{md.number(e, 4)} / {md.number(b, 4)}"
                for e, b in zip(table["ep_pooled_mean_abs"], table["bp_pooled_mean_abs"], strict=True)
            ],
            "std EP / BP": [
                f"{md.number(e, 4)} / {md.number(b, 4)}"
                for e, b in zip(table["ep_pooled_std"], table["bp_pooled_std"], strict=True)
            ],
            "1. EP smaller (magnitude, spread)": [
                f"{md.flag(m)}, {md.flag(s)}"
                for m, s in zip(table["ep_smaller_magnitude"], table["ep_smaller_spread"], strict=True)
            ],
            "(EP smaller at init)": [md.flag(v) for v in table["ep_smaller_at_init"]],
            "ρ(depth, mean |w|)": [md.number(v, 2) for v in table["depth_rho_mean_abs"]],
            "2. deeper closer to zero": [md.flag(v) for v in table["deeper_closer_to_zero"]],
            "(ρ of mean |w| / init RMS)": [md.number(v, 2) for v in table["depth_rho_mean_abs_over_init"]],
            "near-zero skip / main": [
                f"{md.number(s, 3)} / {md.number(m, 3)}"
                for s, m in zip(table["ep_skip_near_zero"], table["ep_main_near_zero"], strict=True)
            ],
            "3. skip fewer near zero": [md.flag(v) for v in table["skip_fewer_near_zero"]],
        }
    )
    measure = table["near_zero_measure"].iloc[0] if len(table) else NEAR_ZERO
    note = (
        "- Weight matrices only (no biases, no BatchNorm). Mean |w| and std pooled over all weights of a "
        "run, then averaged over seeds. ρ: Spearman rank correlation over the EP main-path conv kernels. "
        f"Near zero: `{measure}`, the fraction of |w| below a fraction of the tensor's RMS at "
        "initialisation. Bracketed columns are controls: were the EP weights smaller than BP's already at "
        "initialisation, and does the depth trend survive dividing by each layer's initial RMS (which "
        "shrinks with fan-in)? BP conv kernels feed BatchNorm, which makes their scale arbitrary up to "
        "weight decay: compare magnitudes with that in mind.\n"
    )
    return md.to_markdown(cells) + "\n" + note


def write_weight_table(table: pd.DataFrame, csv_path: PathLike, md_path: PathLike) -> None:
    """Write `weight_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, csv_path, md_path, weight_markdown(table))


# --- figures ----------------------------------------------------------------------------------------------


def _profile_data(weights: pd.DataFrame, near_zero: str, activation: str) -> pd.DataFrame:
    """Long rows (group, side, role, depth, mean_abs, std, near_zero) of `weight_layers` for plotting; side
    is 'BP' or the EP estimators of that graph ('CEP')."""
    weights = comparable(weights, activation)
    layers = weight_layers(weights, near_zero=near_zero, activation=activation)
    estimators = (
        weights[weights["algorithm"] != "bp"].groupby("graph")["algorithm"].agg(lambda a: sorted(set(a)))
    )
    parts = []
    for side in ("ep", "bp"):
        part = layers[[*GROUP, "role", "depth", f"{side}_mean_abs", f"{side}_std", f"{side}_near_zero"]]
        part = part.rename(columns={f"{side}_{k}": k for k in ("mean_abs", "std", "near_zero")})
        if side == "bp":
            part = part.assign(side="BP")
        else:
            names = part["graph"].map(
                lambda g: "/".join(label("algorithm", a) for a in estimators.get(g, []))
            )
            part = part.assign(side=names.replace("", "EP"))
        parts.append(part.dropna(subset=["mean_abs"]))
    return pd.concat(parts, ignore_index=True)


def plot_weight_profiles(
    weights: pd.DataFrame,
    png: PathLike,
    pdf: PathLike | None = None,
    *,
    near_zero: str = NEAR_ZERO,
    activation: str = PAPER_ACTIVATION,
) -> None:
    """Per layer against depth: mean |w| (log scale), standard deviation and near-zero fraction, EP vs BP,
    skip kernels as squares; one row of panels per (dataset, graph, width). `weights` is `load_weights`."""
    data = _profile_data(weights, near_zero, activation)
    groups = list(data.groupby(GROUP).groups) or [None]
    sides = sorted(data["side"].unique(), key=lambda s: (s == "BP", s))
    colors = dict(zip(sides, sns.color_palette(PALETTE, max(len(sides), 1)), strict=False))
    panels = (
        ("mean_abs", "mean |w|"),
        ("std", "standard deviation of w"),
        ("near_zero", "fraction of near-zero weights"),
    )
    caption = (
        "Per weight matrix after training, mean over seeds; depth = position on the main path (dense head "
        "last), a block's skip drawn at the depth of the layer it feeds. Paper: CEP weights smaller and less "
        "spread than BP's; deeper layers closer to zero; skip kernels fewer near-zero weights. Near zero: "
        f"{near_zero}, |w| below that fraction of the layer's RMS at initialisation."
    )
    title = "Trained weights by depth: EP vs BP"
    with figure(png, pdf, nrows=len(groups), ncols=3, title=title, caption=caption) as (_, axes):
        for i, key in enumerate(groups):
            frame = data[(data[GROUP] == pd.Series(key, index=GROUP)).all(axis=1)] if key else data.iloc[0:0]
            for ax, (column, ylabel) in zip(axes[i], panels, strict=True):
                if frame.empty:
                    no_data(ax, "no completed runs with weight records")
                    continue
                for side in sides:
                    part = frame[frame["side"] == side]
                    main = part[part["role"] != "skip"].sort_values("depth")
                    skip = part[part["role"] == "skip"]
                    if not main.empty:
                        ax.plot(main["depth"], main[column], marker="o", color=colors[side],
                                label=f"{side}, main path")  # fmt: skip
                    if not skip.empty:
                        ax.scatter(skip["depth"], skip[column], marker="s", s=50, color=colors[side],
                                   edgecolor="black", zorder=3, label=f"{side}, skip (1×1)")  # fmt: skip
                if column == "mean_abs":
                    ax.set_yscale("log")
                dataset, graph, width = key
                ax.set(
                    title=f"{label('dataset', dataset)}, {graph} graph, width {width:g}",
                    xlabel="depth (main-path layer)",
                    ylabel=ylabel,
                )
                ax.legend(fontsize=7)


def _histograms(run_dir: PathLike) -> dict[str, dict[str, list[float]]]:
    return json.loads((Path(run_dir) / "weights_histograms.json").read_text())


def plot_weight_histograms(
    ep_dir: PathLike, bp_dir: PathLike | None, png: PathLike, pdf: PathLike | None = None
) -> None:
    """One panel per weight matrix of the EP run (depth order, skips after the layer they feed): its
    histogram (density) against the matched layer of the BP run on the same graph, if given."""
    ep_run = read_run(ep_dir)
    ep_rows = weight_rows(pd.read_csv(Path(ep_dir) / "weights_summary.csv"))
    ep_rows = ep_rows.sort_values(["depth", "role"], key=_role_key, kind="stable")
    sides = [("EP", ep_rows, _histograms(ep_dir), ep_run)]
    if bp_dir is not None:
        bp_rows = weight_rows(pd.read_csv(Path(bp_dir) / "weights_summary.csv"))
        sides.append(("BP", bp_rows, _histograms(bp_dir), read_run(bp_dir)))
    nrows, ncols = grid_shape(len(ep_rows))
    names = " vs ".join(
        f"{label('algorithm', r['algorithm'])} {label('arch', r['network'])}" for _, _, _, r in sides
    )
    setting = f"{label('dataset', ep_run['dataset'])}, width {ep_run['width']:g}, seed {ep_run['seed']}"
    caption = (
        f"Histograms of the trained weights ({setting}), density per layer; layers matched by depth rank "
        "within their role (main path / skip)."
    )
    title = f"Weight distributions: {names}"
    with figure(png, pdf, nrows=nrows, ncols=ncols, panel=(3.2, 2.4), title=title, caption=caption) as (
        _,
        axes,
    ):
        colors = sns.color_palette(PALETTE, 2)
        for ax, (_, row) in zip(axes.flat, ep_rows.iterrows(), strict=False):
            for color, (side, rows, hist, _) in zip(colors, sides, strict=False):
                match = rows[(rows["role"] == row["role"]) & (rows["index"] == row["index"])]
                if match.empty:
                    continue
                h = hist[match["name"].iloc[0]]
                edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], dtype=float)
                density = counts / max(counts.sum(), 1.0) / np.diff(edges)
                ax.stairs(
                    density,
                    edges,
                    color=color,
                    label=f"{side}: {match['name'].iloc[0]}",
                    fill=side == "EP",
                    alpha=0.5 if side == "EP" else 1.0,
                )
            ax.set_title(f"{row['layer']} ({row['kernel']})")
            ax.set_xlabel("weight value")
            ax.set_ylabel("density")
            ax.legend(fontsize=6, loc="upper right")
        hide_unused(axes, len(ep_rows))
