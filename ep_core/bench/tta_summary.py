"""What `bench-tta` computes from its run records: the per-recipe summary (accuracies under both test
procedures, training and evaluation seconds, the training-time speed-up, the paired difference to the
reference with its 95 % interval, the stated targets' verdict, the gradient-fidelity monitor's cosine,
where the speed-up comes from: the relaxation's and the rest of the training loop's seconds), the
`--select-lr` and `--select` steps' choices and the equal-compute control's epochs."""

from __future__ import annotations

import statistics
from typing import Any

from .tta_stats import (
    TARGET_MARGIN,
    TARGET_SPEEDUP,
    choose_lr,
    fitting_epochs,
    mean_sd,
    paired_difference,
    select_candidate,
    times,
    verdict,
)


def _completed(runs: list[dict[str, Any]], name: str, phase: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in runs
        if r["recipe"] == name and r["status"] == "completed" and (phase is None or r["phase"] == phase)
    ]


def _spread(mine: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    values = [r[key] for r in mine if r.get(key) is not None]
    if not values:
        return None
    mean, sd = mean_sd(values)
    return {"mean": mean, "sd": sd}


def _fidelity(mine: list[dict[str, Any]]) -> dict[str, Any] | None:
    probed = [r["fidelity"] for r in mine if r.get("fidelity")]
    if not probed:
        return None
    return {
        "runs_with_probes": len(probed),
        "probes": sum(int(f["probes"]) for f in probed),
        "cosine_last": statistics.fmean(float(f["cosine_last"]) for f in probed),
        "cosine_min": min(float(f["cosine_min"]) for f in probed),
    }


def recipe_summary(
    runs: list[dict[str, Any]], name: str, reference: str, judge: bool = True
) -> dict[str, Any]:
    """One recipe's row (its completed runs; the paired statistics over the seeds it shares with the
    reference's completed main runs; with `judge`, the targets' verdict)."""
    mine = _completed(runs, name)
    out: dict[str, Any] = {"runs": len([r for r in runs if r["recipe"] == name]), "completed": len(mine)}
    if not mine:
        return out
    train = _spread(mine, "train_seconds")
    epochs = statistics.fmean(r["epochs"] for r in mine)
    out |= {
        "epochs": epochs,
        "test_acc": _spread(mine, "test_acc"),
        "test_acc_own": _spread(mine, "test_acc_own"),
        "own_eval_iterations": mine[0].get("own_eval_iterations"),
        "train_seconds": train,
        "train_seconds_per_epoch": train["mean"] / epochs if train else None,
        "eval_seconds": _spread(mine, "eval_seconds"),
        "probe_seconds": statistics.fmean(r.get("probe_seconds", 0.0) for r in mine),
        "free_sweeps": _mean_of(mine, "free_sweeps"),
        "nudged_sweeps": _mean_of(mine, "nudged_sweeps"),
        "fidelity": _fidelity(mine),
        "final_cosine": _spread(mine, "final_cosine"),
        "dead_layers": {str(r["seed"]): r["dead_layers"] for r in mine if r.get("dead_layers")},
    }
    ref = _completed(runs, reference, "main")
    if name == reference or not ref or not train:
        return out
    ref_train = statistics.fmean(r["train_seconds"] for r in ref)
    by_seed = {r["seed"]: r for r in ref}
    out["speedup_training"] = ref_train / train["mean"]
    out["speedup_per_seed"] = {
        str(r["seed"]): by_seed[r["seed"]]["train_seconds"] / r["train_seconds"]
        for r in mine
        if r["seed"] in by_seed
    }
    out |= time_split(mine, ref)
    diff = paired_difference(
        {r["seed"]: r["test_acc"] for r in mine}, {s: r["test_acc"] for s, r in by_seed.items()}
    )
    out["diff_vs_reference"] = diff.as_dict()
    if judge:
        holds, why = verdict(out["speedup_training"], diff)
        out["verdict"] = {"holds": holds, "why": why}
    if lived := _both_lived(mine, by_seed):
        out["diff_both_lived"] = lived
    return out


def time_split(mine: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, float]:
    """Where a recipe's training-time speed-up comes from: the relaxation's own (free and nudged phases:
    what its sweep counts cut) and the mean seconds a run of the rest of the training loop (Hebbian
    gradient, update, monitor probes, data), the recipe's and the reference's. Empty when a run's record
    has no relaxation time (a result from before the field)."""
    if any(r.get("relaxation_seconds") is None for r in (*mine, *ref)):
        return {}

    def relaxing(runs: list[dict[str, Any]]) -> float:
        return statistics.fmean(r["relaxation_seconds"] for r in runs)

    def rest(runs: list[dict[str, Any]]) -> float:
        return statistics.fmean(r["train_seconds"] - r["relaxation_seconds"] for r in runs)

    return {
        "speedup_relaxation": relaxing(ref) / relaxing(mine),
        "rest_seconds": rest(mine),
        "reference_rest_seconds": rest(ref),
    }


def _both_lived(mine: list[dict[str, Any]], reference: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The paired difference over the seeds where neither network lost a hidden layer, when a dead one
    left any out (None otherwise): a secondary description by a fixed rule, never the target's test. It
    conditions on an outcome of training, so it can favour the recipe that loses more networks."""
    paired = {r["seed"]: r for r in mine if r["seed"] in reference}
    both = [s for s, r in paired.items() if lived(r) and lived(reference[s])]  # completed runs: dead or not
    if not both or len(both) == len(paired):
        return None
    diff = paired_difference(
        {s: paired[s]["test_acc"] for s in both}, {s: reference[s]["test_acc"] for s in both}
    )
    return {**diff.as_dict(), "seeds_left_out": sorted(set(paired) - set(both))}


def _mean_of(mine: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in mine if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def summarise(
    runs: list[dict[str, Any]], names: list[str], reference: str, judged: list[str] | None = None
) -> dict[str, Any]:
    """Every recipe's summary, in `names` order; the `judged` ones (default: all) held to the targets (not
    the equal-compute control, which claims nothing)."""
    return {name: recipe_summary(runs, name, reference, judged is None or name in judged) for name in names}


def versus(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """The paired difference a − b of test accuracy (e.g. fast − authors@fast-time), when they share seeds."""
    left = {r["seed"]: r["test_acc"] for r in _completed(runs, a)}
    right = {r["seed"]: r["test_acc"] for r in _completed(runs, b)}
    if not set(left) & set(right):
        return None
    return {"a": a, "b": b, **paired_difference(left, right).as_dict()}


def summary_line(dataset: str, recipes: dict[str, Any], reference: str) -> str:
    """One sentence per compared recipe, each under its own name, and the targets it was held to."""
    parts = []
    for name, s in recipes.items():
        if name == reference or "verdict" not in s:
            continue
        d = s["diff_vs_reference"]
        interval = (
            f"[{d['ci95_low']:+.2f}, {d['ci95_high']:+.2f}]" if d["ci95_low"] is not None else "(no interval)"
        )
        parts.append(
            f"{name}: {times(s['speedup_training'])} less training time than {reference}, accuracy "
            f"{d['mean']:+.2f} points {interval} (95 %, n={d['n']}): target "
            f"{'holds' if s['verdict']['holds'] else 'does not hold'}"
        )
    targets = f"targets: speed-up >= {TARGET_SPEEDUP:g}x and interval inside ±{TARGET_MARGIN:g} point"
    return f"{dataset}: " + ("; ".join(parts) if parts else "no recipe compared") + f" ({targets})"


def selection(runs: list[dict[str, Any]], reference: str, candidates: list[str], tolerance: float) -> dict:
    """The `select` step's means per candidate and the rule's choice (ep_core.bench.tta_stats)."""

    def means(name: str) -> dict[str, float] | None:
        mine = [
            r for r in runs if r["phase"] == "select" and r["recipe"] == name and r["status"] == "completed"
        ]
        if not mine:
            return None
        n = len(mine)
        return {
            "val_acc": sum(r["val_acc"] for r in mine) / n,
            "train_seconds": sum(r["train_seconds"] for r in mine) / n,
        }

    ref = means(reference)
    table = {name: m for name in candidates if (m := means(name)) is not None}
    chosen = select_candidate(table, ref, tolerance) if ref is not None else None
    return {"reference": ref, "candidates": table, "tolerance": tolerance, "chosen": chosen}


def lived(run: dict[str, Any]) -> bool:
    """A run that completed with no dead hidden layer."""
    return run["status"] == "completed" and not run.get("dead_layers")


def lr_selection(runs: list[dict[str, Any]], lrs: list[float]) -> dict[str, Any]:
    """The `select-lr` step's row per candidate rate (its runs, whether all lived, the networks that did
    not, mean validation accuracy over all and per recipe) and the rule's choice (ep_core.bench.tta_stats)."""
    rows = []
    for lr in lrs:
        mine = [r for r in runs if r["phase"] == "select-lr" and r.get("lr") == lr]
        by_recipe: dict[str, list[float]] = {}
        for r in mine:
            if r["status"] == "completed" and r.get("val_acc") is not None:
                by_recipe.setdefault(r["recipe"], []).append(r["val_acc"])
        accs = [a for v in by_recipe.values() for a in v]
        rows.append({
            "lr": lr, "runs": len(mine), "lived": bool(mine) and all(map(lived, mine)),
            "died": [f"{r['recipe']} seed {r['seed']}" for r in mine if not lived(r)],
            "val_acc": statistics.fmean(accs) if accs else None,
            "val_acc_by_recipe": {name: statistics.fmean(v) for name, v in by_recipe.items()},
        })  # fmt: skip
    return {"candidates": rows, "chosen": choose_lr(rows)}


def control_epochs(runs: list[dict[str, Any]], reference: str, of: str) -> dict[str, Any] | None:
    """`reference@of-time`: the whole epochs of the reference's mean training seconds per epoch that fit
    in `of`'s mean training seconds (main runs), or None while either has no completed run."""

    def mine(name: str) -> list[dict[str, Any]]:
        return [
            r for r in runs if r["phase"] == "main" and r["recipe"] == name and r["status"] == "completed"
        ]

    ref, other = mine(reference), mine(of)
    if not ref or not other:
        return None
    per_epoch = sum(r["train_seconds"] / r["epochs"] for r in ref) / len(ref)
    budget = sum(r["train_seconds"] for r in other) / len(other)
    name = f"{reference}@{of}-time"
    return {"name": name, "of": of, "epochs": fitting_epochs(budget, per_epoch), "budget_seconds": budget,
            "reference_seconds_per_epoch": per_epoch}  # fmt: skip
