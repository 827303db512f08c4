"""`ep-core bench-tta`: time to accuracy of training recipes, trained side by side on the same data.

Each recipe is a set of dotted config keys on top of one shared setting (by default the authors'
hyper-parameters on scikit-learn's digits with the digits demo's batch 32 and lr 0.05, Hopfield-ResNet13 at
1/8 width, where convolutions rather than per-call overhead take the time, for 5 epochs: 32 minutes
for 2 recipes × 3 seeds on 2 CPU cores; `--width 0.0625` is a quarter of the FLOPs, mostly overhead).
Every (seed, recipe) run is one `ep-core train` in a fresh run directory, and the runs are interleaved —
seed 0 of every recipe, then seed 1, ... — so a slow spell of a shared machine falls on all recipes alike.
The result (`results/benchmarks/tta.json` and a markdown table) gives per recipe the final test accuracy
(mean ± sd over seeds), the wall time of a run, the sweeps per training step (free phase, each nudged phase;
means over the run's batches), the seconds spent in the free and nudged phases, and the wall-time ratio to
the reference recipe (`speedup`: the reference's mean wall time ÷ the other's).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from ..training.config import build_config
from ..training.recipes import RECIPES
from ..training.run import train

BASE: dict[str, Any] = {
    "data": {"name": "digits"},
    "model": {"arch": "hopfield_resnet13", "width": 0.125},
    # The authors' optimizer, beta, clip, warm start and relaxation (resolved from the defaults), scaled down
    # in width and epochs; and the digits demo's batch 32 and lr 0.05: at the authors' batch of 128, digits'
    # 1,437 training examples give 11 steps per epoch, and 5 epochs of those stayed near chance.
    "optim": {"lr": 0.05},
    "train": {"epochs": 5, "batch_size": 32, "device": "cpu", "checkpoint_every": 1000},
}
# The recipes bench-tta compares when none is named (each a list of dotted overrides).
COMPARED: dict[str, list[str]] = {
    "authors": ["ep.recipe=authors"],  # 120 free / 50 + 50 nudged plain sweeps, even/odd, eval 120
    "fast": ["ep.recipe=fast"],  # 40 free / 15 + 15 nudged plain sweeps, eval 40
}


def run_recipe(name: str, overrides: list[str], seed: int, out: Path, threads: int | None) -> dict[str, Any]:
    """Train one (recipe, seed) from scratch in `out`; its accuracy, wall time and sweeps per step."""
    shutil.rmtree(out, ignore_errors=True)
    config = build_config(BASE, [*overrides, f"train.seed={seed}"])
    t0 = time.perf_counter()
    status = train(config, out, threads=threads)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))

    def values(column: str) -> list[float]:
        return [float(r[column]) for r in rows if r.get(column) not in (None, "")]

    def mean_of(column: str) -> float | None:
        return statistics.fmean(values(column)) if values(column) else None

    return {
        "recipe": name,
        "seed": seed,
        "exit_status": status,
        "status": metrics["status"],
        "test_acc": metrics["final"]["test_acc"],
        "wall_seconds": wall,
        "free_sweeps": mean_of("free_iterations"),
        "nudged_sweeps": mean_of("nudged_iterations"),  # each of the two nudged phases
        # where the wall time went: the training phases summed over epochs (the rest is evaluation, data,
        # the Hebbian terms and the optimizer)
        "free_seconds": sum(values("free_seconds")),
        "nudged_seconds": sum(values("nudged_seconds")),
        "epochs": len(rows),
    }


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_tta(
    *,
    recipes: dict[str, list[str]] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    epochs: int | None = None,
    width: float | None = None,
    reference: str = "authors",
    workdir: str | Path = "results/benchmarks/tta-runs",
    threads: int | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Every (seed, recipe) run, interleaved by seed, and the summary `format_tta` prints."""
    recipes = dict(COMPARED if recipes is None else recipes)
    if reference not in recipes:
        raise ValueError(f"reference recipe {reference!r} is not among the recipes: {', '.join(recipes)}")
    if not seeds:
        raise ValueError("bench-tta needs at least one seed")
    common = list(extra or [])
    if epochs is not None:
        common.append(f"train.epochs={epochs}")
    if width is not None:
        common.append(f"model.width={width}")
    for overrides in recipes.values():  # every recipe checked before any training
        build_config(BASE, [*overrides, *common])
    load_before = os.getloadavg()
    runs = []
    for seed in seeds:
        for name, overrides in recipes.items():
            runs.append(
                run_recipe(name, [*overrides, *common], seed, Path(workdir) / f"{name}-seed{seed}", threads)
            )
    summary = {}
    for name in recipes:
        mine = [r for r in runs if r["recipe"] == name]
        acc, acc_sd = _spread([r["test_acc"] for r in mine])
        wall, wall_sd = _spread([r["wall_seconds"] for r in mine])
        summary[name] = {
            "acc_mean": acc, "acc_sd": acc_sd, "wall_mean": wall, "wall_sd": wall_sd,
            "free_sweeps": statistics.fmean(r["free_sweeps"] for r in mine),
            "nudged_sweeps": statistics.fmean(r["nudged_sweeps"] for r in mine),
            "free_seconds": statistics.fmean(r["free_seconds"] for r in mine),
            "nudged_seconds": statistics.fmean(r["nudged_seconds"] for r in mine),
            "completed": sum(r["status"] == "completed" for r in mine), "runs": len(mine),
        }  # fmt: skip
    for s in summary.values():
        s["wall_ratio"] = s["wall_mean"] / summary[reference]["wall_mean"]
    others = [n for n in recipes if n != reference]
    return {
        "setting": {**BASE, "overrides": common, "recipes": recipes, "seeds": list(seeds)},
        "reference": reference,
        # the reference's mean wall time ÷ the (first) other recipe's
        "speedup": summary[reference]["wall_mean"] / summary[others[0]]["wall_mean"] if others else 1.0,
        "recipes": summary,
        "runs": runs,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }


def format_tta(result: dict[str, Any]) -> str:
    """The markdown table of a `run_tta` result."""
    ref = result["reference"]
    lines = [
        "| recipe | test accuracy (mean ± sd) | wall time per run (s) | of which free / nudged phases (s) "
        f"| sweeps per step: free + 2 × nudged | wall time ÷ {ref} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["recipes"].items():
        lines.append(
            f"| {name} | {s['acc_mean']:.2f} ± {s['acc_sd']:.2f} % "
            f"| {s['wall_mean']:.0f} ± {s['wall_sd']:.0f} "
            f"| {s['free_seconds']:.0f} / {s['nudged_seconds']:.0f} "
            f"| {s['free_sweeps']:.1f} + 2 × {s['nudged_sweeps']:.1f} | {s['wall_ratio']:.2f} |"
        )
    n = len(result["setting"]["seeds"])
    lines.append(
        f"\nspeed-up ({ref} wall ÷ fast wall): {result['speedup']:.2f}x over {n} seeds; load average "
        f"{result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after"
    )
    return "\n".join(lines)


def write_tta(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """'fast:ep.tol=1e-4,ep.order=coloring' -> ('fast:ep.tol=1e-4,...', ['ep.recipe=fast', ...])."""
    name, _, keys = text.partition(":")
    if name not in RECIPES:
        raise ValueError(f"--recipe {text!r}: unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    return text, [f"ep.recipe={name}", *(k for k in keys.split(",") if k)]
