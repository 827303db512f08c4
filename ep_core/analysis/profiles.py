"""Time and memory of a CEP training step beside backprop, from `ep-core bench --json` files.

The bench format is still growing, so every field is optional here: a missing key (or a null `bp`) reads as
NaN, and the older flat format (`step_ms`, `bp_step_ms`, ... at the top level) is read too. Phase times are
per training step at the bench's own iteration counts; `project_to` scales the relaxation phases linearly
to the authors' 120 free + 2 × 50 nudged iterations (the per-iteration cost does not depend on the count),
which is what a step of the paper's recipe costs on that hardware.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from ..benchmark import BP_TWIN
from ..naming import network_name
from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, no_data
from .runs import label

TOP = ("arch", "width", "blocks", "batch_size", "device", "device_name", "dtype", "threads",
       "free_iterations", "nudge_iterations", "flop_bound_ratio", "overhead_ratio")  # fmt: skip
EP_FIELDS = ("step_ms", "free_ms", "minus_ms", "plus_ms", "gradient_ms", "update_ms", "free_ms_per_iteration",
             "nudged_ms_per_iteration", "peak_memory_mb", "gflops")  # fmt: skip
BP_FIELDS = ("arch", "step_ms", "peak_memory_mb")
LEGACY = {"step_ms": "ep_step_ms", "free_ms_per_iteration": "ep_free_ms_per_iteration",
          "nudged_ms_per_iteration": "ep_nudged_ms_per_iteration", "gradient_ms": "ep_gradient_ms",
          "peak_memory_mb": "ep_peak_memory_mb", "bp_step_ms": "bp_step_ms"}  # fmt: skip
PHASES = {
    "free_ms": "free",
    "minus_ms": "−β phase",
    "plus_ms": "+β phase",
    "nudged_ms": "±β phases (stacked)",
    "gradient_ms": "gradient (Hebbian)",
    "update_ms": "optimizer update",
    "other_ms": "other / unattributed",
}
PAPER_ITERATIONS = (120, 50)  # free, per nudged phase
CIFAR10_TRAIN, PAPER_EPOCHS = 50_000, 300
# The paper's measurements (RTX 4090 / RTX 6000 Ada), full width, batch 128.
PAPER_MEMORY_MIB = {"hopfield_resnet13": 1612.0, "resnet13": 1324.0}
PAPER_HOURS_AT_LEAST = {"hopfield_resnet13": 30.0}  # "over 30 hours" for 300 epochs
PAPER_SETTING = {"width": 1.0, "batch_size": 128}


def _is_paper_setting(row: pd.Series) -> bool:
    return all(row[k] == v for k, v in PAPER_SETTING.items())


def _number(value: object) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _depth(arch: str, blocks: float) -> float:
    if arch in ("vgg5", "vgg5_bp"):
        return 5.0
    if arch == "hopfield_resnet":
        return 3 * blocks + 1 if not math.isnan(blocks) else math.nan
    return 13.0 if arch in ("hopfield_resnet13", "hopfield_plain13", "resnet13") else math.nan


def read_benchmark(path: PathLike) -> dict[str, object]:
    data = json.loads(Path(path).read_text())
    row: dict[str, object] = {"source": str(path)}
    for key in TOP:
        value = data.get(key)
        row[key] = value if key in ("arch", "device", "device_name", "dtype") else _number(value)
    row["device_name"] = row["device_name"] or row["device"] or "unknown device"
    ep = data.get("ep") if isinstance(data.get("ep"), dict) else {}
    bp = data.get("bp") if isinstance(data.get("bp"), dict) else {}
    row |= {f"ep_{k}": _number(ep.get(k)) for k in EP_FIELDS}
    row |= {f"bp_{k}": _number(bp.get(k)) for k in BP_FIELDS if k != "arch"}
    row["bp_arch"] = bp.get("arch")
    for old, new in LEGACY.items():  # the flat format of the first `ep-core bench --json`
        if old in data and math.isnan(row[new]):  # type: ignore[arg-type]
            row[new] = _number(data[old])
    if row["bp_arch"] is None and not math.isnan(row["bp_step_ms"]):  # type: ignore[arg-type]
        row["bp_arch"] = BP_TWIN.get(str(row["arch"]))  # the flat format times the twin without naming it
    row["depth"] = _depth(str(row["arch"]), row["blocks"])  # type: ignore[arg-type]
    return row


def load_benchmarks(paths: Iterable[PathLike]) -> pd.DataFrame:
    """One row per bench JSON file: the top-level fields, `ep_*` and `bp_*` measurements, depth, source."""
    columns = ["source", *TOP, *(f"ep_{k}" for k in EP_FIELDS), *(f"bp_{k}" for k in BP_FIELDS), "depth"]
    return pd.DataFrame([read_benchmark(p) for p in paths], columns=columns)


def phase_times(bench: pd.DataFrame, project_to: tuple[int, int] | None = PAPER_ITERATIONS) -> pd.DataFrame:
    """Milliseconds per training step by phase (the `PHASES` columns) and their sum `step_ms`.

    The ±β phases appear separately when the bench timed them separately, else as one stacked phase.
    `other_ms` is the measured step time not covered by the timed phases (clipped at 0). With `project_to`
    = (free, nudged) iterations, the relaxation phases are scaled from the bench's counts to those.
    """
    out = pd.DataFrame(index=bench.index)
    fi, ni = bench["free_iterations"], bench["nudge_iterations"]
    out["free_ms"] = bench["ep_free_ms"].fillna(bench["ep_free_ms_per_iteration"] * fi)
    separate = bench["ep_minus_ms"].notna() & bench["ep_plus_ms"].notna()
    out["minus_ms"] = bench["ep_minus_ms"].where(separate)
    out["plus_ms"] = bench["ep_plus_ms"].where(separate)
    out["nudged_ms"] = (bench["ep_nudged_ms_per_iteration"] * ni).where(~separate)
    out["gradient_ms"] = bench["ep_gradient_ms"]
    out["update_ms"] = bench["ep_update_ms"]
    timed = out.sum(axis=1, min_count=1)
    out["other_ms"] = (bench["ep_step_ms"] - timed).clip(lower=0.0)
    if project_to is not None:
        out["free_ms"] *= project_to[0] / fi
        for column in ("minus_ms", "plus_ms", "nudged_ms"):
            out[column] *= project_to[1] / ni
    out["step_ms"] = out[list(PHASES)].sum(axis=1, min_count=1)
    return out


def profile_table(
    bench: pd.DataFrame, *, train_examples: int = CIFAR10_TRAIN, epochs: int = PAPER_EPOCHS
) -> pd.DataFrame:
    """One row per bench file: EP vs BP step time and peak memory, phase times, and the step projected to
    the paper's iteration counts with the hours that makes for `epochs` epochs of `train_examples`
    examples (training steps only: evaluation is not included). Where the row is the paper's setting
    (Hopfield-ResNet13, width 1, batch 128) the paper's memory and time figures sit beside ours.
    """
    measured = phase_times(bench, project_to=None)
    projected = phase_times(bench, project_to=PAPER_ITERATIONS)
    table = bench[["device_name", "arch", "bp_arch", "width", "depth", "batch_size", "dtype", "threads",
                   "free_iterations", "nudge_iterations", "ep_step_ms", "bp_step_ms",
                   "ep_peak_memory_mb", "bp_peak_memory_mb", "ep_gflops", "overhead_ratio",
                   "flop_bound_ratio", "source"]].copy()  # fmt: skip
    table["step_ratio_ep_bp"] = table["ep_step_ms"] / table["bp_step_ms"]
    table["memory_ratio_ep_bp"] = table["ep_peak_memory_mb"] / table["bp_peak_memory_mb"]
    for column in PHASES:
        table[column] = measured[column]
    table["projected_step_s"] = projected["step_ms"] / 1e3
    steps = np.ceil(train_examples / table["batch_size"]) * epochs
    table["projected_hours"] = table["projected_step_s"] * steps / 3600
    paper = table.apply(_is_paper_setting, axis=1).astype(bool)
    table["paper_ep_memory_mib"] = table["arch"].map(PAPER_MEMORY_MIB).where(paper)
    table["paper_bp_memory_mib"] = table["bp_arch"].map(PAPER_MEMORY_MIB).where(paper)
    table["paper_hours_at_least"] = table["arch"].map(PAPER_HOURS_AT_LEAST).where(paper)
    order = ["device_name", "arch", "depth", "width", "batch_size", "source"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def profile_markdown(table: pd.DataFrame) -> str:
    cells = pd.DataFrame(
        {
            "device": table["device_name"],
            "network (EP / BP)": [
                f"{a} / {b}" if isinstance(b, str) else a
                for a, b in zip(table["arch"], table["bp_arch"], strict=True)
            ],
            "depth": [md.number(d, 0) for d in table["depth"]],
            "width": [f"{w:g}" for w in table["width"]],
            "batch": [md.number(b, 0) for b in table["batch_size"]],
            "EP step (ms)": [md.number(v, 1) for v in table["ep_step_ms"]],
            "BP step (ms)": [md.number(v, 1) for v in table["bp_step_ms"]],
            "EP / BP time": [md.number(v, 1) for v in table["step_ratio_ep_bp"]],
            "EP memory (MiB)": [md.number(v, 0) for v in table["ep_peak_memory_mb"]],
            "BP memory (MiB)": [md.number(v, 0) for v in table["bp_peak_memory_mb"]],
            "paper memory EP / BP (MiB)": [
                md.DASH if md.missing(e) else f"{e:g} / {b:g}"
                for e, b in zip(table["paper_ep_memory_mib"], table["paper_bp_memory_mib"], strict=True)
            ],
            "step at 120 + 2×50 it. (s)": [md.number(v, 2) for v in table["projected_step_s"]],
            "300 epochs (h)": [md.number(v, 1) for v in table["projected_hours"]],
            "paper (h)": [md.DASH if md.missing(v) else f"> {v:g}" for v in table["paper_hours_at_least"]],
        }
    )
    note = (
        "- Step times at the bench's own iteration counts (columns free_iterations, nudge_iterations of the "
        "CSV); *step at 120 + 2×50 it.* scales the relaxation phases linearly to the authors' counts, and "
        f"*300 epochs* multiplies it by the training steps of 300 epochs of CIFAR-10 ({CIFAR10_TRAIN:,} "
        "images; evaluation not included). The paper's figures were measured on an RTX 4090 / RTX 6000 Ada.\n"
    )
    return md.to_markdown(cells) + "\n" + note


def write_profile_table(table: pd.DataFrame, csv_path: PathLike, md_path: PathLike) -> None:
    """Write `profile_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, csv_path, md_path, profile_markdown(table))


# --- figures ----------------------------------------------------------------------------------------------


def _devices(bench: pd.DataFrame) -> str:
    return ", ".join(sorted(bench["device_name"].astype(str).unique())) or "no bench data"


def _case_label(row: pd.Series) -> str:
    """'Hopfield-ResNet13  w=1 B=128', 'Hopfield-ResNet19 (6 blocks)  w=1 B=16': the network's one name
    (`naming.network_name`; 4 blocks is Hopfield-ResNet13 itself)."""
    blocks = row.get("blocks")
    blocks = None if blocks is None or pd.isna(blocks) else int(blocks)
    return f"{network_name(row['arch'], blocks)}  w={row['width']:g} B={row['batch_size']:g}"


def plot_step_phases(
    bench: pd.DataFrame, png: PathLike, pdf: PathLike | None = None, *, project: bool = True
) -> None:
    """Stacked horizontal bars: seconds per CEP training step by phase, one bar per bench file (architecture,
    width, batch size), one panel per device; each bar is annotated with the hours 300 CIFAR-10 epochs take
    at that rate. `project` scales the relaxation phases to the authors' 120 + 2 × 50 iterations (else as
    measured)."""
    devices = sorted(bench["device_name"].astype(str).unique()) or [None]
    phases = phase_times(bench, PAPER_ITERATIONS if project else None)
    steps = np.ceil(CIFAR10_TRAIN / bench["batch_size"]) * PAPER_EPOCHS
    how = "projected to 120 free + 2 × 50 nudged iterations" if project else "at the bench's iteration counts"
    caption = (
        f"Seconds per CEP training step, {how}; number at the end of a bar: hours for {PAPER_EPOCHS} epochs "
        "of CIFAR-10 at that rate (training steps only, evaluation excluded). Paper: Hopfield-ResNet13 takes "
        "over 30 h for 300 epochs on one RTX 4090 / RTX 6000 Ada, much of it kernel-launch and "
        "synchronisation overhead."
    )
    bars = [max(int((bench["device_name"] == d).sum()), 1) for d in devices]
    panel = (7.5, 1.2 + 0.32 * sum(bars) / len(bars))  # each panel as tall as its bars need
    title = "Where a CEP training step spends its time"
    layout = {"gridspec_kw": {"height_ratios": [1.2 / 0.32 + b for b in bars]}}
    with figure(png, pdf, nrows=len(devices), panel=panel, title=title, caption=caption, **layout) as (
        _,
        axes,
    ):
        colors = dict(zip(PHASES, sns.color_palette(PALETTE, len(PHASES)), strict=True))
        for ax, device in zip(axes.flat, devices, strict=True):
            rows = bench[bench["device_name"] == device]
            family = rows["arch"].str.rstrip("0123456789").rename("family")  # hopfield_resnet13 with its kin
            rows = rows.join(family).sort_values(["family", "depth", "width", "batch_size"], kind="stable")
            if device is None or rows.empty:
                no_data(ax, "no bench files")
                continue
            y = np.arange(len(rows))[::-1]  # first case on top
            left = np.zeros(len(rows))
            for column, phase in PHASES.items():
                seconds = phases.loc[rows.index, column].to_numpy(dtype=float) / 1e3
                if np.all(np.isnan(seconds)):
                    continue
                seconds = np.nan_to_num(seconds)
                ax.barh(y, seconds, left=left, label=phase, color=colors[column], height=0.7)
                left += seconds
            hours = phases.loc[rows.index, "step_ms"] / 1e3 * steps[rows.index] / 3600
            for yy, end, h, (_, r) in zip(y, left, hours, rows.iterrows(), strict=True):
                if not np.isfinite(h):
                    continue
                text = f"{h:.3g} h" if h < 100 else f"{h:,.0f} h"
                if r["arch"] in PAPER_HOURS_AT_LEAST and _is_paper_setting(r):
                    text += f" (paper: > {PAPER_HOURS_AT_LEAST[r['arch']]:g} h)"
                ax.annotate(text, (end, yy), ha="left", va="center", fontsize=7, xytext=(3, 0),
                            textcoords="offset points")  # fmt: skip
            ax.set_yticks(y, [_case_label(r) for _, r in rows.iterrows()], fontsize=8)
            ax.set_xlim(0, left.max() * 1.3 if left.max() > 0 else 1)
            ax.set(title=str(device), xlabel="seconds per training step", ylabel="")
            ax.grid(axis="y", visible=False)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="phase")


X_LABELS = {"batch_size": "batch size", "width": "width multiplier (1 = 128-256-512-512 channels)",
            "depth": "depth (weight layers)"}  # fmt: skip
HELD = {"width": 1.0, "batch_size": 128}  # the paper's setting, where the bench files have it
DEPTH_FAMILY = ("hopfield_resnet13", "hopfield_resnet")


def _held_value(bench: pd.DataFrame, key: str) -> float:
    """The value `key` is held at while another axis varies: the paper's, else the most common one."""
    values = bench[key].dropna()
    if (values == HELD[key]).any() or values.empty:
        return HELD[key]
    return float(values.mode().iloc[0])


def scaling_data(bench: pd.DataFrame, x: str) -> tuple[pd.DataFrame, str]:
    """Long rows (series, method, x, device_name, step_ms, peak_memory_mb), EP and BP, along one axis
    (batch_size, width or depth) with the other two held fixed (the paper's width 1 and batch 128 where
    present), and a phrase saying what is held. Depth compares the Hopfield-ResNet family
    (hopfield_resnet13 and hopfield_resnet with any number of blocks); the other axes compare the named
    architectures at their own depth."""
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {', '.join(X_LABELS)}, got {x!r}")
    family = bench["arch"].isin(DEPTH_FAMILY) if x == "depth" else bench["arch"] != "hopfield_resnet"
    bench = bench[family]
    held = {k: _held_value(bench, k) for k in HELD if k != x}
    for key, value in held.items():
        bench = bench[bench[key] == value]
    several = [k for k in ("device_name", "dtype") if bench[k].nunique() > 1]
    rows = []
    for _, r in bench.iterrows():
        where = " ".join(str(r[k]) for k in several)
        suffix = f" ({where})" if where else ""
        name = "Hopfield-ResNet" if x == "depth" else label("arch", r["arch"])
        device = r["device_name"]
        rows.append({"series": f"CEP {name}{suffix}", "method": "CEP", x: r[x], "device_name": device,
                     "step_ms": r["ep_step_ms"], "peak_memory_mb": r["ep_peak_memory_mb"]})  # fmt: skip
        if isinstance(r["bp_arch"], str):
            rows.append({"series": f"BP {label('arch', r['bp_arch'])}{suffix}", "method": "BP", x: r[x],
                         "device_name": device, "step_ms": r["bp_step_ms"],
                         "peak_memory_mb": r["bp_peak_memory_mb"]})  # fmt: skip
    phrase = ", ".join(f"{'width' if k == 'width' else 'batch'} {v:g}" for k, v in held.items())
    columns = ["series", "method", x, "device_name", "step_ms", "peak_memory_mb"]
    return pd.DataFrame(rows, columns=columns), phrase


def plot_ep_vs_bp(
    bench: pd.DataFrame, png: PathLike, pdf: PathLike | None = None, *, x: str = "batch_size"
) -> None:
    """Two panels, step time (log scale) and peak device memory, against `x` (batch_size, width or depth)
    with the other two held fixed, CEP solid and BP dashed; the paper's memory at batch 128 (HR13 CEP
    1612 MiB, BP ResNet13 1324 MiB) is drawn as stars when x is the batch size at width 1."""
    data, held = scaling_data(bench, x)
    title = f"CEP vs backprop: cost against {X_LABELS[x].split(' (')[0]} ({held}) — {_devices(data)}"
    paper_stars = x == "batch_size" and held == "width 1"
    caption = (
        "One CEP training step (free phase, −β and +β phases, gradient, update) at the bench's iteration "
        "counts vs one backprop step of the twin network on the same batch. Memory: the rise in peak memory "
        "during one step, each measured in a fresh process: on a GPU the allocator's peak above what was "
        "allocated before the step, on a CPU the rise of the process's peak resident set (RSS)."
    )
    if paper_stars:
        caption += " Stars: the paper's measurement (RTX 4090 / RTX 6000 Ada)."
    hue_order = list(dict.fromkeys(data["series"]))
    panels = (("step_ms", "milliseconds per training step"), ("peak_memory_mb", "peak memory (MiB)"))
    with figure(png, pdf, ncols=2, panel=(5.0, 3.8), title=title, caption=caption) as (_, axes):
        for ax, (column, ylabel) in zip(axes.flat, panels, strict=True):
            points = data.dropna(subset=[column])
            if points.empty:
                where = " (bench run with --no-memory?)" if column == "peak_memory_mb" else ""
                no_data(ax, f"no {ylabel.split(' (')[0]} in the bench files{where}")
            else:
                sns.lineplot(
                    points, x=x, y=column, hue="series", hue_order=hue_order, style="method",
                    style_order=["CEP", "BP"], markers=True, dashes={"CEP": "", "BP": (4, 2)},
                    palette=PALETTE, ax=ax, legend=ax is axes.flat[-1],
                )  # fmt: skip
                if column == "step_ms":
                    ax.set_yscale("log")
                if x in ("batch_size", "width"):
                    ax.set_xscale("log", base=2)
                    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
            if column == "peak_memory_mb" and paper_stars:
                for arch, mib in PAPER_MEMORY_MIB.items():
                    ax.scatter(
                        [PAPER_SETTING["batch_size"]], [mib], marker="*", s=120, color="black", zorder=5
                    )
                    ax.annotate(
                        f"paper, {label('arch', arch)}: {mib:g} MiB", (PAPER_SETTING["batch_size"], mib),
                        xytext=(-8, 0), textcoords="offset points", ha="right", va="center", fontsize=7,
                    )  # fmt: skip
            ax.set(xlabel=X_LABELS[x], ylabel=ylabel)
            if ax.get_legend() is not None:
                ax.legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.02, 1.0))
