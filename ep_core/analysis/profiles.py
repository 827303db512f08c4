"""Time and memory of a CEP training step beside backprop, from `ep-core bench --json` files.

The bench format is still growing, so every field is optional here: a missing key (or a null `bp`) reads as
NaN, and the older flat format (`step_ms`, `bp_step_ms`, ... at the top level) is read too. Phase times are
per training step at the bench's own iteration counts; `project_to` scales the relaxation phases linearly
to the authors' 120 free + 2 × 50 nudged iterations (the per-iteration cost does not depend on the count),
which is what a step of the paper's recipe costs on that hardware.

Every step time is the median of the bench's repeats, reported with their min and max and the host's load
average before and after; a measurement whose repeats disagree by more than `MAX_SPREAD` (max / min) is
flagged *unsteady* in the table and hatched in the figure: its host was busy, its bar is not a cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from ..numerics.backprop import BP_TWIN
from ..numerics.naming import network_name
from . import _markdown as md
from ._figures import PALETTE, PathLike, figure, no_data
from .runs import label

TOP = ("arch", "width", "blocks", "batch_size", "device", "device_name", "dtype", "threads",
       "free_iterations", "nudge_iterations", "repeats", "flop_bound_ratio", "overhead_ratio")  # fmt: skip
SPREAD = ("step_ms_min", "step_ms_max")  # of the repeats, from the bench's `spread_ms.step`
LOAD = ("load_before", "load_after")  # the host's 1-minute load average around the timings
MAX_SPREAD = 1.5  # repeats whose max / min exceeds this flag the measurement as unsteady
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
    for prefix, part in (("ep", ep), ("bp", bp)):
        step = (part.get("spread_ms") or {}).get("step") or {}
        row |= {f"{prefix}_{k}": _number(step.get(k.rsplit("_", 1)[1])) for k in SPREAD}
    load = data.get("load_average") or {}
    row |= {k: _number((load.get(k.split("_")[1]) or [None])[0]) for k in LOAD}
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
    columns = ["source", *TOP, *(f"ep_{k}" for k in EP_FIELDS), *(f"bp_{k}" for k in BP_FIELDS),
               *(f"{m}_{k}" for m in ("ep", "bp") for k in SPREAD), *LOAD, "depth"]  # fmt: skip
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


def spread(bench: pd.DataFrame, max_spread: float = MAX_SPREAD) -> pd.DataFrame:
    """Per bench row: max / min of the EP and of the BP step's repeats, and `unsteady`: either exceeds
    `max_spread` (NaN spreads, as from one repeat or an old bench file, are not flagged)."""
    if max_spread < 1:
        raise ValueError(f"max_spread is a ratio max / min of repeats, so >= 1; got {max_spread}")
    out = pd.DataFrame(index=bench.index)
    for m in ("ep", "bp"):
        out[f"{m}_step_spread"] = bench[f"{m}_step_ms_max"] / bench[f"{m}_step_ms_min"]
    out["unsteady"] = (out > max_spread).any(axis=1)
    return out


def profile_table(
    bench: pd.DataFrame,
    *,
    train_examples: int = CIFAR10_TRAIN,
    epochs: int = PAPER_EPOCHS,
    max_spread: float = MAX_SPREAD,
) -> pd.DataFrame:
    """One row per bench file: EP vs BP step time (median, min and max of the repeats) and peak memory,
    phase times, and the step projected to the paper's iteration counts with the hours that makes for
    `epochs` epochs of `train_examples` examples (training steps only: evaluation is not included), each
    with the range the repeats' min and max give; the host's load average around the timings and
    `unsteady` where the repeats disagree by more than `max_spread`. Where the row is the paper's setting
    (Hopfield-ResNet13, width 1, batch 128) the paper's memory and time figures sit beside ours.
    """
    measured = phase_times(bench, project_to=None)
    projected = phase_times(bench, project_to=PAPER_ITERATIONS)
    table = bench[["device_name", "arch", "bp_arch", "width", "depth", "batch_size", "dtype", "threads",
                   "free_iterations", "nudge_iterations", "repeats", "ep_step_ms", "ep_step_ms_min",
                   "ep_step_ms_max", "bp_step_ms", "bp_step_ms_min", "bp_step_ms_max", "load_before",
                   "load_after", "ep_peak_memory_mb", "bp_peak_memory_mb", "ep_gflops", "overhead_ratio",
                   "flop_bound_ratio", "source"]].copy()  # fmt: skip
    table = table.join(spread(bench, max_spread))
    table["step_ratio_ep_bp"] = table["ep_step_ms"] / table["bp_step_ms"]
    table["memory_ratio_ep_bp"] = table["ep_peak_memory_mb"] / table["bp_peak_memory_mb"]
    for column in PHASES:
        table[column] = measured[column]
    table["projected_step_s"] = projected["step_ms"] / 1e3
    steps = np.ceil(train_examples / table["batch_size"]) * epochs
    table["projected_hours"] = table["projected_step_s"] * steps / 3600
    for end in ("min", "max"):  # the repeats' range, carried through the (linear) projection
        table[f"projected_hours_{end}"] = (
            table["projected_hours"] * table[f"ep_step_ms_{end}"] / table["ep_step_ms"]
        )
    paper = table.apply(_is_paper_setting, axis=1).astype(bool)
    table["paper_ep_memory_mib"] = table["arch"].map(PAPER_MEMORY_MIB).where(paper)
    table["paper_bp_memory_mib"] = table["bp_arch"].map(PAPER_MEMORY_MIB).where(paper)
    table["paper_hours_at_least"] = table["arch"].map(PAPER_HOURS_AT_LEAST).where(paper)
    order = ["device_name", "arch", "depth", "width", "batch_size", "source"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def _ranged(value: object, low: object, high: object, digits: int) -> str:
    """'93.1 (90.2–95.0)': the median with the min and max of the repeats, when the bench gave them."""
    if md.missing(value) or md.missing(low) or md.missing(high):
        return md.number(value, digits)
    return f"{md.number(value, digits)} ({md.number(low, digits)}–{md.number(high, digits)})"


def _steadiness(row: pd.Series) -> str:
    spreads = [v for v in (row["ep_step_spread"], row["bp_step_spread"]) if not md.missing(v)]
    if not spreads:
        return md.DASH
    worst = f"max/min ×{max(spreads):.2f}"
    return f"⚠ unsteady, {worst}" if row["unsteady"] else worst


def profile_markdown(table: pd.DataFrame, max_spread: float = MAX_SPREAD) -> str:
    def ranged(column: str, digits: int = 1) -> list[str]:
        ends = [table[f"{column}_{end}"] for end in ("min", "max")]
        return [_ranged(*v, digits) for v in zip(table[column], *ends, strict=True)]

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
            "EP step (ms)": ranged("ep_step_ms"),
            "BP step (ms)": ranged("bp_step_ms"),
            "EP / BP time": [md.number(v, 1) for v in table["step_ratio_ep_bp"]],
            "EP memory (MiB)": [md.number(v, 0) for v in table["ep_peak_memory_mb"]],
            "BP memory (MiB)": [md.number(v, 0) for v in table["bp_peak_memory_mb"]],
            "paper memory EP / BP (MiB)": [
                md.DASH if md.missing(e) else f"{e:g} / {b:g}"
                for e, b in zip(table["paper_ep_memory_mib"], table["paper_bp_memory_mib"], strict=True)
            ],
            "step at 120 + 2×50 it. (s)": [md.number(v, 2) for v in table["projected_step_s"]],
            "300 epochs (h)": ranged("projected_hours"),
            "paper (h)": [md.DASH if md.missing(v) else f"> {v:g}" for v in table["paper_hours_at_least"]],
            "repeats": [md.number(v, 0) for v in table["repeats"]],
            "load before / after": [
                f"{md.number(a, 2)} / {md.number(b, 2)}"
                for a, b in zip(table["load_before"], table["load_after"], strict=True)
            ],
            "repeats agree?": [_steadiness(r) for _, r in table.iterrows()],
        }
    )
    note = (
        "- Step times at the bench's own iteration counts (columns free_iterations, nudge_iterations of the "
        "CSV); *step at 120 + 2×50 it.* scales the relaxation phases linearly to the authors' counts, and "
        f"*300 epochs* multiplies it by the training steps of 300 epochs of CIFAR-10 ({CIFAR10_TRAIN:,} "
        "images; evaluation not included). The paper's figures were measured on an RTX 4090 / RTX 6000 Ada.\n"
        "- Times are the median of the repeats with (min–max) beside it; *load before / after* is the host's "
        "1-minute load average just before and just after the timings (a quiet host shows about its own "
        "threads after, nothing before). **⚠ unsteady**: the repeats of the EP or the BP step disagree by "
        f"more than ×{max_spread:g} (max / min) — the host was busy, so that row times its neighbours, not "
        "the network; rerun it on a quiet machine before reading it as a cost.\n"
    )
    return md.to_markdown(cells) + "\n" + note


def write_profile_table(
    table: pd.DataFrame, csv_path: PathLike, md_path: PathLike, max_spread: float = MAX_SPREAD
) -> None:
    """Write `profile_table(...)` as CSV (full precision) and markdown."""
    md.write_csv_and_markdown(table, csv_path, md_path, profile_markdown(table, max_spread))


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
    bench: pd.DataFrame,
    png: PathLike,
    pdf: PathLike | None = None,
    *,
    project: bool = True,
    max_spread: float = MAX_SPREAD,
) -> None:
    """Stacked horizontal bars: seconds per CEP training step by phase, one bar per bench file (architecture,
    width, batch size), one panel per device; each bar is annotated with the hours 300 CIFAR-10 epochs take
    at that rate, carries the min–max of the repeats as an error bar, and is hatched and marked unsteady
    where the repeats disagree by more than `max_spread`. `project` scales the relaxation phases to the
    authors' 120 + 2 × 50 iterations (else as measured)."""
    devices = sorted(bench["device_name"].astype(str).unique()) or [None]
    phases = phase_times(bench, PAPER_ITERATIONS if project else None)
    steps = np.ceil(CIFAR10_TRAIN / bench["batch_size"]) * PAPER_EPOCHS
    hours = phases["step_ms"] / 1e3 * steps / 3600
    caption = _step_phases_caption(project, max_spread)
    flags = spread(bench, max_spread)
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
            rows = _device_cases(bench, device)
            if device is None or rows.empty:
                no_data(ax, "no bench files")
                continue
            y = np.arange(len(rows))[::-1]  # first case on top
            left = _phase_bars(ax, y, phases.loc[rows.index], colors)
            unsteady = flags.loc[rows.index, "unsteady"].to_numpy(dtype=bool)
            ends = _repeat_marks(ax, y, left, rows, unsteady, max_spread)
            _hour_labels(ax, y, ends, hours.loc[rows.index], unsteady, rows, flags)
            ax.set_yticks(y, [_case_label(r) for _, r in rows.iterrows()], fontsize=8)
            ax.set_xlim(0, ends.max() * 1.4 if ends.max() > 0 else 1)
            ax.set(title=str(device), xlabel="seconds per training step", ylabel="")
            ax.grid(axis="y", visible=False)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="phase")


def _step_phases_caption(project: bool, max_spread: float) -> str:
    how = "projected to 120 free + 2 × 50 nudged iterations" if project else "at the bench's iteration counts"
    return (
        f"Seconds per CEP training step, {how}; number at the end of a bar: hours for {PAPER_EPOCHS} epochs "
        "of CIFAR-10 at that rate (training steps only, evaluation excluded). Paper: Hopfield-ResNet13 takes "
        "over 30 h for 300 epochs on one RTX 4090 / RTX 6000 Ada, much of it kernel-launch and "
        "synchronisation overhead. Error bars: min–max of the bench's repeats (the bar is their median); "
        f"hatched and marked ⚠ ×(max / min): the repeats disagree by more than ×{max_spread:g}, so the host "
        "was busy and the bar is not a cost."
    )


def _device_cases(bench: pd.DataFrame, device: str | None) -> pd.DataFrame:
    """The bench rows of one device in drawing order: by architecture family, depth, width, batch size."""
    rows = bench[bench["device_name"] == device]
    family = rows["arch"].str.rstrip("0123456789").rename("family")  # hopfield_resnet13 with its kin
    return rows.join(family).sort_values(["family", "depth", "width", "batch_size"], kind="stable")


def _phase_bars(ax: Axes, y: np.ndarray, phases: pd.DataFrame, colors: dict) -> np.ndarray:
    """One stacked segment per phase, in seconds (a phase no case timed gets none, and no legend entry);
    returns where each bar ends, its step time."""
    left = np.zeros(len(phases))
    for column, phase in PHASES.items():
        seconds = phases[column].to_numpy(dtype=float) / 1e3
        if np.all(np.isnan(seconds)):
            continue
        seconds = np.nan_to_num(seconds)
        ax.barh(y, seconds, left=left, label=phase, color=colors[column], height=0.7)
        left += seconds
    return left


def _repeat_marks(
    ax: Axes, y: np.ndarray, left: np.ndarray, rows: pd.DataFrame, unsteady: np.ndarray, max_spread: float
) -> np.ndarray:
    """The repeats' min–max as error bars and a hatch over the `unsteady` bars; returns where each bar's
    marks end (the repeats' max where known, else the bar's end), for its label."""
    # The repeats' range, scaled like the bar (the projection is linear in the step time).
    low, high = (left * (rows[f"ep_step_ms_{e}"] / rows["ep_step_ms"]).to_numpy() for e in ("min", "max"))
    ranged = np.isfinite(low) & np.isfinite(high)
    if ranged.any():
        at, lo, hi = left[ranged], low[ranged], high[ranged]
        ax.errorbar(at, y[ranged], xerr=[at - lo, hi - at], fmt="none", ecolor="black", capsize=2,
                    elinewidth=0.8, label="min–max of repeats")  # fmt: skip
    if unsteady.any():
        ax.barh(y[unsteady], left[unsteady], color="none", edgecolor="black", hatch="///", height=0.7,
                label=f"⚠ repeats differ > ×{max_spread:g}")  # fmt: skip
    return np.where(ranged, high, left)


def _hour_labels(
    ax: Axes,
    y: np.ndarray,
    ends: np.ndarray,
    hours: pd.Series,
    unsteady: np.ndarray,
    rows: pd.DataFrame,
    flags: pd.DataFrame,
) -> None:
    """Each bar's hours for the paper's epochs at its end: with the paper's figure at the paper's setting,
    and the repeats' worse spread where they disagree."""
    for yy, end, h, bad, (i, r) in zip(y, ends, hours, unsteady, rows.iterrows(), strict=True):
        if not np.isfinite(h):
            continue
        text = f"{h:.3g} h" if h < 100 else f"{h:,.0f} h"
        if r["arch"] in PAPER_HOURS_AT_LEAST and _is_paper_setting(r):
            text += f" (paper: > {PAPER_HOURS_AT_LEAST[r['arch']]:g} h)"
        if bad:
            worst = flags.loc[i, ["ep_step_spread", "bp_step_spread"]].max()
            text += f" ⚠ ×{worst:.2g}"
        ax.annotate(text, (end, yy), ha="left", va="center", fontsize=7, xytext=(3, 0),
                    textcoords="offset points")  # fmt: skip


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


def scaling_data(bench: pd.DataFrame, x: str, max_spread: float = MAX_SPREAD) -> tuple[pd.DataFrame, str]:
    """Long rows (series, method, x, device_name, step_ms with the repeats' step_ms_min and step_ms_max,
    unsteady: they disagree by more than `max_spread`, peak_memory_mb), EP and BP, along one axis
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
        methods = [("CEP", f"CEP {name}", "ep")]
        if isinstance(r["bp_arch"], str):
            methods.append(("BP", f"BP {label('arch', r['bp_arch'])}", "bp"))
        for method, series, m in methods:
            times = {k: r[f"{m}_{k}"] for k in ("step_ms", "step_ms_min", "step_ms_max")}
            unsteady = times["step_ms_max"] / times["step_ms_min"] > max_spread
            rows.append({"series": f"{series}{suffix}", "method": method, x: r[x], **times,
                         "unsteady": unsteady, "device_name": r["device_name"],
                         "peak_memory_mb": r[f"{m}_peak_memory_mb"]})  # fmt: skip
    phrase = ", ".join(f"{'width' if k == 'width' else 'batch'} {v:g}" for k, v in held.items())
    columns = ["series", "method", x, "device_name", "step_ms", "step_ms_min", "step_ms_max", "unsteady",
               "peak_memory_mb"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns), phrase


def _repeat_ranges(ax, points: pd.DataFrame, x: str, hue_order: list[str]) -> None:
    """Error bars from the repeats' min to max in each series' colour, and a ring round unsteady points."""
    for series, color in zip(hue_order, sns.color_palette(PALETTE, len(hue_order)), strict=True):
        s = points[
            (points["series"] == series) & points["step_ms_min"].notna() & points["step_ms_max"].notna()
        ]
        if not s.empty:
            yerr = [s["step_ms"] - s["step_ms_min"], s["step_ms_max"] - s["step_ms"]]
            ax.errorbar(s[x], s["step_ms"], yerr=yerr, fmt="none", ecolor=color, elinewidth=0.8, capsize=2)
    bad = points[points["unsteady"].astype(bool)]
    ax.scatter(bad[x], bad["step_ms"], s=140, facecolors="none", edgecolors="red", linewidths=1.2, zorder=6)


def plot_ep_vs_bp(
    bench: pd.DataFrame,
    png: PathLike,
    pdf: PathLike | None = None,
    *,
    x: str = "batch_size",
    max_spread: float = MAX_SPREAD,
) -> None:
    """Two panels, step time (log scale, min–max of the repeats as error bars, a ring round a point whose
    repeats disagree by more than `max_spread`) and peak device memory, against `x` (batch_size, width or
    depth) with the other two held fixed, CEP solid and BP dashed; the paper's memory at batch 128 (HR13
    CEP 1612 MiB, BP ResNet13 1324 MiB) is drawn as stars when x is the batch size at width 1."""
    data, held = scaling_data(bench, x, max_spread)
    title = f"CEP vs backprop: cost against {X_LABELS[x].split(' (')[0]} ({held}) — {_devices(data)}"
    paper_stars = x == "batch_size" and held == "width 1"
    caption = (
        "One CEP training step (free phase, −β and +β phases, gradient, update) at the bench's iteration "
        "counts vs one backprop step of the twin network on the same batch. Memory: the rise in peak memory "
        "during one step, each measured in a fresh process: on a GPU the allocator's peak above what was "
        "allocated before the step, on a CPU the rise of the process's peak resident set (RSS). "
        "Error bars: min–max of the bench's repeats; a red ring: they disagree "
        f"by more than ×{max_spread:g} (a busy host, not a cost)."
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
                    _repeat_ranges(ax, points, x, hue_order)
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
