"""One training run of `ep-core bench-tta` and what the protocol keeps of it.

A run is one `ep-core train` (ep_core.training.run.train) in a fresh directory, with the authors' number of
evaluation sweeps (`ep.eval_iterations`, which only evaluation reads) whatever the recipe, so that every
epoch's test accuracy in history.csv is the authors' test procedure for the plain fixed-length recipes. Its
final network has two tests, from zero states on the test split: with the authors' relaxation (their
evaluation sweeps, order, solver and tolerance: `test_acc`, the protocol's accuracy, exact for every recipe)
and with the recipe's own (`test_acc_own`, e.g. 40 sweeps for `fast`). A test whose relaxation the run's
per-epoch evaluation already used is its last history row (`tests_from_history`); the others are run here.

Wall time is split per epoch: `train_seconds` (history.csv: the training loop, gradient-fidelity probes
included) and evaluation (`epoch_seconds − train_seconds`). When a history has no `train_seconds` column
(a run.py before it), the sum of the step's timed phases stands in, and `train_seconds_source` says so.
`relaxation_seconds` is the part of the training time spent in the free and nudged phases: what a recipe's
sweep counts cut; the rest of the loop (Hebbian gradient, update, monitor probes, data) they do not.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..numerics.fidelity import probe
from ..training.checkpoint import load_checkpoint
from ..training.config import RunConfig, resolve
from ..training.datasets import Data, load_data
from ..training.learners import EPLearner
from ..training.run import build_model, train


class StoppedError(Exception):
    """A run stopped by a signal (SIGINT, SIGTERM): the protocol stops too; `status` is 128 + the signal."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


PHASE_COLUMNS = ("free_seconds", "nudged_seconds", "gradient_seconds", "step_seconds", "allreduce_seconds")
RELAXATION_COLUMNS = PHASE_COLUMNS[:2]  # the phases whose length a recipe's sweep counts set


def _floats(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column) not in (None, "")]


def _read_history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def epoch_times(rows: list[dict[str, str]]) -> tuple[list[float], list[float], str]:
    """Per epoch: training seconds, evaluation seconds, and where the training seconds came from."""
    if rows and all(r.get("train_seconds") not in (None, "") for r in rows):
        train_s, source = [float(r["train_seconds"]) for r in rows], "history train_seconds"
    else:
        train_s = [sum(float(r[c]) for c in PHASE_COLUMNS if r.get(c) not in (None, "")) for r in rows]
        source = "sum of the timed step phases (history has no train_seconds)"
    eval_s = [max(0.0, float(r["epoch_seconds"]) - t) for r, t in zip(rows, train_s, strict=True)]
    return train_s, eval_s, source


def relaxation_seconds(rows: list[dict[str, str]]) -> float | None:
    """The training seconds spent relaxing (history.csv's free and nudged phases, per-epoch sums), or None
    when a row lacks them."""
    if not rows or any(r.get(c) in (None, "") for r in rows for c in RELAXATION_COLUMNS):
        return None
    return sum(float(r[c]) for r in rows for c in RELAXATION_COLUMNS)


def backfill_relaxation(record: dict[str, Any], out: Path) -> None:
    """Add `relaxation_seconds` to a completed run's record from before the field, from its history in
    `out` when that is still the same run (its training seconds agree): a resumed result then reports the
    relaxation's speed-up for every run."""
    history = out / "history.csv"
    trained = record.get("train_seconds")
    if "relaxation_seconds" in record or trained is None or not history.exists():
        return  # has it already, or never completed (no training seconds), or its folder is gone
    rows = _read_history(out)
    if abs(sum(epoch_times(rows)[0]) - trained) <= 1e-6 * max(1.0, trained):
        record["relaxation_seconds"] = relaxation_seconds(rows)


def curve(rows: list[dict[str, str]], train_s: list[float]) -> list[dict[str, float | None]]:
    """Test (and validation) accuracy after each epoch against the training seconds spent so far."""
    points, spent = [], 0.0
    for row, seconds in zip(rows, train_s, strict=True):
        spent += seconds
        val = row.get("val_acc")
        points.append(
            {
                "epoch": int(row["epoch"]),
                "train_seconds": spent,
                "test_acc": float(row["test_acc"]),
                "val_acc": float(val) if val not in (None, "") else None,
            }
        )
    return points


def _trained(config: RunConfig, out: Path) -> tuple[RunConfig, Data, Any]:
    """The resolved config, the data (unaugmented, on the CPU) and the network trained in `out`."""
    run = resolve(config)
    d = run.data
    synthetic = {"n_train": d.synthetic_train, "n_test": d.synthetic_test} if d.name == "synthetic" else None
    data = load_data(
        d.name, data_dir=d.data_dir, preset=d.preset, augment=False, val_size=d.val_size,
        split_seed=d.split_seed, device="cpu", synthetic=synthetic,
    )  # fmt: skip
    model = build_model(run, data.info)
    model.load_state_dict(load_checkpoint(out / "model.pt"))
    return run, data, model


def final_accuracy(config: RunConfig, out: Path, relaxation: RunConfig, split: str = "test") -> float:
    """The accuracy of the network in `out` (trained with `config`) on `split`, relaxed from zero states
    as `relaxation`'s ep section says (its eval_iterations, order, solver, tolerance)."""
    run, data, model = _trained(config, out)
    learner = EPLearner(model, dataclasses.replace(run, ep=resolve(relaxation).ep))
    return learner.evaluate(data.eval_batches(split, run.train.eval_batch_size))["acc"]


def final_cosine(config: RunConfig, out: Path, rows: list[dict[str, str]]) -> float:
    """The gradient-fidelity cosine of the recipe's own phases at the final network, on the monitor's probe
    batch, untimed: the same figure for every recipe, whether or not (and how often) its monitor probed.
    `auto` is probed at the counts it trained its last epoch with."""
    run, data, model = _trained(config, out)
    ep = run.ep
    last = rows[-1]
    if last.get("auto/free_iterations") not in (None, ""):
        ep = dataclasses.replace(
            ep, free_iterations=int(float(last["auto/free_iterations"])),
            nudge_iterations=int(float(last["auto/nudge_iterations"])),
        )  # fmt: skip
    learner = EPLearner(model, dataclasses.replace(run, ep=ep))
    x, y = data.probe_batch(run.train.fidelity_batch)
    return probe(learner.net, learner.format_input(x), y, learner.estimator)[0].cosine


def _fidelity(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """metrics.json's gradient-fidelity summary, when the monitor probed at least once."""
    summary = metrics.get("fidelity")
    if not isinstance(summary, dict) or not summary.get("probes"):
        return None
    keys = ("probes", "cosine_last", "cosine_min", "cosine_mean")
    return {k: summary.get(k) for k in keys}


def run_one(
    name: str, config: RunConfig, own: RunConfig, authors: RunConfig, seed: int, out: Path,
    threads: int | None, phase: str,
) -> dict[str, Any]:  # fmt: skip
    """Train (recipe `name`, `seed`) from scratch in `out` with `config` (the recipe with the authors'
    evaluation sweeps), then test its final network with the authors' relaxation and its own (`own`)."""
    shutil.rmtree(out, ignore_errors=True)  # a run cut short is trained again whole: its times stay clean
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    status = train(config, out, threads=threads)
    wall = time.perf_counter() - started
    if status >= 128:  # checkpointed by train(); the protocol trains it again whole when resumed
        raise StoppedError(f"{out}: stopped by signal {status - 128}", status)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = _read_history(out)
    record: dict[str, Any] = {
        "recipe": name, "seed": seed, "phase": phase, "exit_status": status, "status": metrics["status"],
        "epochs": len(rows), "wall_seconds": wall, "load_before": load_before,
    }  # fmt: skip
    if metrics["status"] != "completed" or not rows:
        return record | {"load_after": os.getloadavg()[0], "message": metrics.get("message")}
    train_s, eval_s, source = epoch_times(rows)
    record |= {
        "train_seconds": sum(train_s), "eval_seconds": sum(eval_s), "train_seconds_source": source,
        "probe_seconds": sum(_floats(rows, "fidelity/probe_seconds")),
        "relaxation_seconds": relaxation_seconds(rows),
        "test_acc_history": float(rows[-1]["test_acc"]),
        "val_acc": float(rows[-1]["val_acc"]) if rows[-1].get("val_acc") not in (None, "") else None,
        "free_sweeps": _mean(_floats(rows, "free_iterations")),
        "nudged_sweeps": _mean(_floats(rows, "nudged_iterations")),  # each of the two nudged phases
        "fidelity": _fidelity(metrics), "curve": curve(rows, train_s),
        "dead_layers": metrics["dead_layers"],  # a layer that died: the network stopped learning (at chance)
    }  # fmt: skip
    record |= final_tests(config, own, authors, out, float(rows[-1]["test_acc"]))
    if config.is_ep:  # the architecture alone says it: no need to resolve the config again
        record["final_cosine"] = final_cosine(config, out, rows)
    record["load_after"] = os.getloadavg()[0]
    return record


# What EPLearner.evaluate's relaxation reads from the `ep` section (channels_last only changes the layout).
EVAL_KEYS = ("eval_iterations", "order", "tol", "solver", "anderson_memory", "omega")


def _same_relaxation(a: RunConfig, b: RunConfig) -> bool:
    ea, eb = resolve(a).ep, resolve(b).ep
    return all(getattr(ea, k) == getattr(eb, k) for k in EVAL_KEYS)


def final_tests(
    config: RunConfig, own: RunConfig, authors: RunConfig, out: Path, history_acc: float
) -> dict[str, Any]:
    """The final network's test accuracy with the authors' relaxation and with the recipe's own. Where the
    run already evaluated with that relaxation (its last epoch's history row), that value is the test."""
    tests = {"authors": authors, "own": own}
    acc = {
        k: history_acc if _same_relaxation(config, c) else final_accuracy(config, out, c)
        for k, c in tests.items()
    }
    return {
        "test_acc": acc["authors"],
        "test_acc_own": acc["own"],
        "own_eval_iterations": resolve(own).ep.eval_iterations,
        "tests_from_history": [k for k, c in tests.items() if _same_relaxation(config, c)],
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
