"""What `ep-core bench-tta` writes: the JSON (atomically, after every run; a partial one is resumed), the
markdown table and the figure of test accuracy against training wall time."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..training.checkpoint import atomic_write_text
from .tta_stats import times


def write_json(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


# What an attempt measured besides its runs, kept when the same command runs again (ep_core.bench.tta).
MEASURED = ("load_average_before", "load_average_after", "warmup_seconds")


def load_partial(
    path: Path, setting: dict[str, Any]
) -> tuple[list[dict[str, Any]], float, dict[str, list[float]]]:
    """The runs an earlier attempt of the same settings left in `path`, the seconds it had spent and what
    else it measured (MEASURED; none, 0 and none if there is no file); a ValueError naming the first
    difference when it holds another setting's result."""
    if not path.exists():
        return [], 0.0, {}
    try:
        earlier = json.loads(path.read_text())
        saved, runs, spent = earlier["setting"], earlier["runs"], float(earlier.get("elapsed_seconds", 0.0))
        measured = {k: earlier[k] for k in MEASURED if k in earlier}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a bench-tta result ({type(error).__name__}); use another --out"
        ) from None
    if saved != setting:
        key = next(k for k in sorted(set(saved) | set(setting)) if saved.get(k) != setting.get(k))
        raise ValueError(
            f"{path} holds a bench-tta result of other settings ({key}: {saved.get(key)!r} != "
            f"{setting.get(key)!r}); use another --out, or --fresh to overwrite it"
        )
    return list(runs), spent, measured


def _acc(cell: dict[str, float] | None) -> str:
    return "–" if cell is None else f"{cell['mean']:.2f} ± {cell['sd']:.2f}"


def _row(name: str, s: dict[str, Any], reference: str) -> str:
    if not s.get("completed"):
        return f"| {name} | – | no completed run ({s['runs']} tried) |" + " – |" * 8
    d = s.get("diff_vs_reference")
    diff = (
        "–"
        if d is None
        else f"{d['mean']:+.2f}"
        + (f" [{d['ci95_low']:+.2f}, {d['ci95_high']:+.2f}]" if d["ci95_low"] is not None else "")
    )
    f = s.get("fidelity")
    fidelity = "–" if f is None else f"{f['cosine_last']:.3f} / {f['cosine_min']:.3f} ({f['probes']})"
    train = s["train_seconds"]
    speedup = (
        "1.00" if name == reference else times(s["speedup_training"]) if "speedup_training" in s else "–"
    )
    own = f"{_acc(s['test_acc_own'])} ({s['own_eval_iterations']})"
    train_cell = f"{train['mean']:.0f} ± {train['sd']:.0f}"
    sweeps = "–" if s.get("free_sweeps") is None else f"{s['free_sweeps']:.0f} / {s['nudged_sweeps']:.0f}"
    final = s.get("final_cosine")
    final_cell = "–" if final is None else f"{final['mean']:.3f} ± {final['sd']:.3f}"
    cells = [name, f"{s['epochs']:g}", sweeps, _acc(s["test_acc"]), own, diff, train_cell, speedup,
             f"{s['eval_seconds']['mean']:.0f}", fidelity, final_cell]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _dead_note(name: str, s: dict[str, Any]) -> str:
    """The seeds of a recipe whose network lost a hidden layer (ep_core.training.dead_layers)."""
    seeds = "; ".join(
        f"seed {seed}: {', '.join(f'{layer} from epoch {epoch}' for layer, epoch in layers.items())}"
        for seed, layers in s["dead_layers"].items()
    )
    return f"- {name}: a hidden layer died (every unit at 0; the network stopped learning) in {seeds}."


def _time_note(name: str, s: dict[str, Any], reference: str) -> str:
    """Where the recipe's training-time speed-up comes from (ep_core.bench.tta_summary.time_split)."""
    return (
        f"- {name}: relaxation (free and nudged phases) {times(s['speedup_relaxation'])} faster than "
        f"in {reference}; the rest of the training loop (Hebbian gradient, update, monitor probes, data), "
        f"which sweep counts do not cut, {s['rest_seconds']:.1f} s a run against "
        f"{s['reference_rest_seconds']:.1f} s."
    )


def _lived_note(name: str, d: dict[str, Any], reference: str) -> str:
    """The paired difference without the seeds where either network died: secondary, not the target's."""
    interval = "" if d["ci95_low"] is None else f" [{d['ci95_low']:+.2f}, {d['ci95_high']:+.2f}]"
    left_out = ", ".join(map(str, d["seeds_left_out"]))
    return (
        f"- {name} − {reference} where both networks kept every layer (seed(s) {left_out} left out; a "
        f"secondary description, not the target's test): {d['mean']:+.2f} points{interval} (paired, "
        f"n={d['n']})."
    )


def _selection_lines(result: dict[str, Any]) -> list[str]:
    """What the selection steps compared on the selection seeds' validation split, and what they chose."""
    lines, seeds = [], ", ".join(map(str, result["setting"].get("selection_seeds", [])))
    if lr := result.get("lr_selection"):
        lines += [
            f"\n--select-lr on seeds {seeds} (validation accuracy %, mean over every recipe's runs):",
            "",
        ]
        for c in lr["candidates"]:
            acc = "–" if c["val_acc"] is None else f"{c['val_acc']:.2f}"
            state = "all lived" if c["lived"] else f"died: {', '.join(c['died'])}"
            mark = " **chosen**" if c["lr"] == lr["chosen"] else ""
            lines.append(f"- lr {c['lr']:g}: {acc} over {c['runs']} runs; {state}{mark}")
    if (sel := result.get("selection")) and sel["reference"]:
        lines.append(
            f"\n--select on seeds {seeds}: chose {sel['chosen'] or 'none'}, the cheapest candidate within "
            f"{sel['tolerance']:g} point(s) of the reference's validation accuracy "
            f"({sel['reference']['val_acc']:.2f} %)"
        )
    return lines


def format_markdown(result: dict[str, Any]) -> str:
    """The result's table, its control comparison, each recipe's verdict and the summary line."""
    setting, ref = result["setting"], result["reference"]
    seeds = ", ".join(map(str, setting["seeds"]))
    chosen = (result.get("lr_selection") or {}).get("chosen")
    lr = f"lr {setting['lr']:g}" if not setting.get("lrs") else f"lr {chosen or '(not chosen)'} (--select-lr)"
    lines = [
        f"### {result['dataset']}: seeds {seeds}; Hopfield-ResNet13 at width {setting['width']:g}, batch "
        f"{setting['batch_size']}, {lr}, {setting['epochs']} epochs"
        + ("" if result["complete"] else " (PARTIAL: the protocol has not finished)"),
        "",
        "| recipe | epochs | sweeps free / nudged | test accuracy %, authors' test: "
        f"{result['authors_eval_iterations']} sweeps (mean ± sd) | own test (its sweeps) "
        f"| − {ref}, paired [95 % CI] | training s (mean ± sd) | speed-up (training) | evaluation s "
        "| monitor cosine last / min (probes) | final network's cosine (untimed, mean ± sd) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(name, s, ref) for name, s in result["recipes"].items()]
    lines += _selection_lines(result)
    control, c = result.get("control"), result.get("control_comparison")
    if control:
        lines.append(
            f"\n{control['name']}: the {control['epochs']} whole epoch(s) of {ref} "
            f"({control['reference_seconds_per_epoch']:.0f} s each) that fit in {control['of']}'s mean "
            f"training time, {control['budget_seconds']:.0f} s."
        )
    if c is not None and c["ci95_low"] is not None:
        lines.append(
            f"At equal training time: {c['a']} − {c['b']} = {c['mean']:+.2f} points "
            f"[{c['ci95_low']:+.2f}, {c['ci95_high']:+.2f}] (paired, n={c['n']})."
        )
    lines.append("")
    for name, s in result["recipes"].items():
        if "verdict" in s:
            state = "holds" if s["verdict"]["holds"] else "does not hold"
            lines.append(f"- {name}: target {state}: {s['verdict']['why']}.")
    lines += [_time_note(name, s, ref) for name, s in result["recipes"].items()
              if "verdict" in s and "speedup_relaxation" in s]  # fmt: skip
    lines += [_dead_note(name, s) for name, s in result["recipes"].items() if s.get("dead_layers")]
    lines += [_lived_note(name, s["diff_both_lived"], ref) for name, s in result["recipes"].items()
              if s.get("diff_both_lived")]  # fmt: skip
    load = result["load_average_before"][0], result["load_average_after"][0]
    lines.append(
        f"\n{result['summary']}\n\nLoad average {load[0]:.2f} before, {load[1]:.2f} after; "
        f"{result['torch_threads']} torch threads on {result['cpu_count']} CPUs; "
        f"{result['elapsed_seconds'] / 60:.0f} min."
    )
    return "\n".join(lines)


def mean_curve(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Epoch by epoch over `runs` (the epochs all of them reached): mean cumulative training seconds and
    mean test accuracy."""
    curves = [r["curve"] for r in runs if r.get("curve")]
    if not curves:
        return [], []
    n = min(len(c) for c in curves)
    x = [statistics.fmean(c[i]["train_seconds"] for c in curves) for i in range(n)]
    y = [statistics.fmean(c[i]["test_acc"] for c in curves) for i in range(n)]
    return x, y


def write_figure(result: dict[str, Any], path: str | Path) -> None:
    """Test accuracy (authors' test) after each epoch against training wall time, a curve per recipe (the
    mean over seeds, bold; each seed, faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    runs = [r for r in result["runs"] if r["phase"] in ("main", "control") and r["status"] == "completed"]
    for i, name in enumerate(result["recipes"]):
        mine = [r for r in runs if r["recipe"] == name]
        colour = f"C{i}"
        for r in mine:
            ax.plot(*zip(*[(p["train_seconds"], p["test_acc"]) for p in r["curve"]], strict=True),
                    color=colour, alpha=0.25, lw=0.8)  # fmt: skip
        x, y = mean_curve(mine)
        if x:
            ax.plot(x, y, "o-", color=colour, lw=2, label=f"{name} (n={len(mine)})")
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel(f"test accuracy % (authors' test: {result['authors_eval_iterations']} sweeps)")
    ax.set_title(f"{result['dataset']}: accuracy against training time, per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
