"""Finished training runs as tables: one row per run (`load_runs`), one per run × epoch (`load_history`).

A run directory is what `ep-core train --out DIR` leaves (see
`ep_core.training.records`). Its identity (dataset,
architecture, algorithm, activation, seed, width, ...) is read from the configuration saved in
`metrics.json`, or from `config.yaml` when the run has not ended (no `metrics.json` yet: status
"incomplete"). Accuracies are copied as recorded, whatever the status; the tables decide what to average
(completed runs only) and count the rest as failures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..numerics.backprop import BP_ACTIVATION
from ..numerics.naming import blocks_of, layers_of, network_name, network_of_config, skips_of
from ..training.config import BP_ARCHS
from ..training.rundir import COMPLETED, UNSUCCESSFUL

PathLike = str | Path

INCOMPLETE = "incomplete"  # no metrics.json: still running, killed, or never started

# The paper's table names the BP twin of VGG5 "vgg5" (paper_results.csv); its EP graphs keep their names.
TABLE_ARCH = {"vgg5_bp": "vgg5", "resnet13": "resnet13"}

DATASET_LABELS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "fashion_mnist": "Fashion-MNIST",
    "digits": "digits (sklearn)",
    "synthetic": "synthetic",
}
ALGORITHM_LABELS = {"cep": "CEP", "ep": "EP", "bp": "BP"}
ACTIVATION_LABELS = {
    "relu6": "ReLU6 (α = 6)",
    "relu1": "ReLU1 (α = 1)",
    "relu_random": "random α per layer",
    BP_ACTIVATION: "ReLU",
}

# Columns that identify a run; load_history repeats them on every epoch row.
IDENTITY = [
    "run_dir", "status", "dataset", "arch", "network", "table_arch", "algorithm", "activation", "seed",
    "width", "epochs_planned",
]  # fmt: skip


RUN_COLUMNS = [
    *IDENTITY, "depth", "blocks", "skips", "order", "beta", "recipe", "free_iterations", "nudge_iterations",
    "phases", "batch_size", "val_size", "epochs", "final_test_acc", "final_train_loss", "best_val_acc",
    "val_selected_test_acc", "val_selected_epoch", "best_test_acc", "best_test_epoch", "wall_seconds",
    "peak_memory_mb", "num_parameters", "device", "message", "dead_layers",
]  # fmt: skip


# history.csv columns that every run (EP or BP) records
GENERIC_HISTORY = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds"]


def label(kind: str, value: Any) -> str:
    """Human-readable name of a dataset, network (`naming.network_name`: one name everywhere), algorithm or
    activation (the code name if unknown)."""
    if kind == "arch":
        return network_name(str(value))
    table = {"dataset": DATASET_LABELS, "algorithm": ALGORITHM_LABELS, "activation": ACTIVATION_LABELS}[kind]
    return table.get(value, str(value))


def algorithm_of(config: dict) -> str:
    """'bp' for the backprop networks, else the EP estimator ('cep' or 'ep')."""
    if config["model"]["arch"] in BP_ARCHS:
        return "bp"
    return config["ep"]["estimator"]


def table_arch_of(config: dict) -> str:
    """The network as the paper's table names it: its one name (`naming.network_slug`), except that the
    backprop VGG5 is the paper's "vgg5" row of algorithm BP."""
    network = network_of_config(config)
    return TABLE_ARCH.get(network, network)


def sweeps(free: int, nudged: int) -> str:
    """'120/50 sweeps': fixed free and nudged phase lengths, as every table names them."""
    return f"{free}/{nudged} sweeps"


def phases_of(config: dict) -> str:
    """How a run's relaxation phases end, as tables and figures name it: '120/50 sweeps' (fixed lengths,
    the authors' recipe), 'fast 40/15 sweeps', 'auto ≤ 120/50 sweeps' (the counts its monitor chooses stay
    at or below these), 'adaptive, tol 0.001 ≤ 120/50 sweeps' (each phase stops at its tolerance, the
    counts its caps); '' for backprop, which relaxes nothing."""
    if algorithm_of(config) == "bp":
        return ""
    ep = config["ep"]
    recipe, counts = ep.get("recipe", "authors"), sweeps(ep["free_iterations"], ep["nudge_iterations"])
    if recipe == "auto":
        return f"auto ≤ {counts}"
    if ep.get("tol") is not None:
        return f"{recipe}, tol {ep['tol']:g} ≤ {counts}"
    return counts if recipe == "authors" else f"{recipe} {counts}"


def depth_of(config: dict) -> int:
    """Weight layers on the main path plus skips, as in the architectures' names (VGG5: 5, HR13: 13)."""
    network = network_of_config(config)
    if network in ("vgg5", "vgg5_bp"):
        return 5
    blocks = blocks_of(network)
    return layers_of(blocks) if blocks is not None else 13


COUNTS = ("n", "n_failed", "n_dead")


def status_counts(group: pd.DataFrame) -> dict[str, int]:
    """One group's runs counted: n (completed: the runs every mean is over), n_failed (diverged or failed,
    outside the means) and n_dead (completed runs in which a hidden layer died, ep_core.training.dead_layers:
    inside the means, at chance accuracy, so that a table says why a mean fell)."""
    completed = group["status"] == COMPLETED
    return {
        "n": int(completed.sum()),
        "n_failed": int(group["status"].isin(UNSUCCESSFUL).sum()),
        "n_dead": int((completed & (group["dead_layers"] > 0)).sum()),
    }


def seed_stats(runs: pd.DataFrame, keys: list[str], stats: Iterable[str]) -> pd.DataFrame:
    """Per group of `keys`: `status_counts` (n, n_failed, n_dead) and {stat}_{mean,std} over the completed
    runs (seeds) of each column in `stats` (NaN values left out); one row per group."""
    stats = list(stats)

    def summary(group: pd.DataFrame) -> pd.Series:
        ok = group[group["status"] == COMPLETED]
        out: dict[str, float] = dict(status_counts(group))
        for stat in stats:
            values = ok[stat].dropna()
            out[f"{stat}_mean"] = values.mean() if len(values) else math.nan
            out[f"{stat}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        return pd.Series(out)

    columns = [*keys, *COUNTS, *(f"{s}_{t}" for s in stats for t in ("mean", "std"))]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    table = runs.groupby(keys)[["status", "dead_layers", *stats]].apply(summary).reset_index()
    return table.astype(dict.fromkeys(COUNTS, int))[columns]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _get(mapping: dict | None, *keys: str) -> Any:
    """mapping[k1][k2]... or NaN when any level is missing or null (metrics of failed runs)."""
    value: Any = mapping
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return math.nan
        value = value[key]
    return value


def _setting(config: dict, key: str) -> Any:
    """The resolved value of a dotted key (lists as JSON text, so that rows group by them)."""
    section, name = key.split(".", 1)
    value = config.get(section, {}).get(name)
    return json.dumps(value) if isinstance(value, list | dict) else value


def read_run(run_dir: PathLike, keys: Iterable[str] = ()) -> dict[str, Any]:
    """One row of `load_runs`; `keys` adds a column per dotted setting (`ep.beta`) with the run's value."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    if metrics is not None:
        config = metrics["config"]
    elif (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    else:
        raise FileNotFoundError(f"{run_dir} is not a run directory: neither metrics.json nor config.yaml")
    m = metrics or {}
    return {
        "run_dir": str(run_dir),
        "status": m.get("status", INCOMPLETE),
        "dataset": config["data"]["name"],
        "arch": config["model"]["arch"],
        "network": network_of_config(config),
        "table_arch": table_arch_of(config),
        "algorithm": algorithm_of(config),
        "activation": config["model"]["activation"],
        "seed": config["train"]["seed"],
        "width": float(config["model"]["width"]),
        "depth": depth_of(config),
        "blocks": blocks_of(network_of_config(config)),
        "skips": skips_of(network_of_config(config)),
        "order": config["ep"]["order"],
        "beta": _get(config, "ep", "beta"),
        # `auto` trains below its free / nudge iterations (their cap); a backprop run has no relaxation
        "recipe": "" if algorithm_of(config) == "bp" else config["ep"].get("recipe", "authors"),
        "free_iterations": config["ep"]["free_iterations"],
        "nudge_iterations": config["ep"]["nudge_iterations"],
        "phases": phases_of(config),
        "batch_size": config["train"]["batch_size"],
        "val_size": config["data"]["val_size"],
        "epochs_planned": config["train"]["epochs"],
        "epochs": m.get("epochs_completed", math.nan),
        "final_test_acc": _get(m, "final", "test_acc"),
        "final_train_loss": _get(m, "final", "train_loss"),
        "best_val_acc": _get(m, "best_val", "val_acc"),  # NaN without a validation split
        "val_selected_test_acc": _get(m, "best_val", "test_acc"),  # NaN without a validation split
        "val_selected_epoch": _get(m, "best_val", "epoch"),
        "best_test_acc": _get(m, "best_test_over_epochs", "test_acc"),  # the paper's optimistic protocol
        "best_test_epoch": _get(m, "best_test_over_epochs", "epoch"),
        "wall_seconds": m.get("wall_seconds", math.nan),
        "peak_memory_mb": m.get("peak_memory_mb", math.nan),
        "num_parameters": m.get("num_parameters", math.nan),
        "device": m.get("device") or "",
        "message": m.get("message") or "",
        "dead_layers": len(m.get("dead_layers") or {}),  # hidden layers that died (training.dead_layers)
    } | {key: _setting(config, key) for key in keys}


def _unique(dirs: Iterable[PathLike]) -> list[Path]:
    """The directories in order, each once: a run two studies share is listed twice but counted once."""
    return list(dict.fromkeys(Path(d) for d in dirs))


def load_runs(dirs: Iterable[PathLike], keys: Iterable[str] = ()) -> pd.DataFrame:
    """One row per run directory, in the order given, each directory once (see `read_run` for the
    columns; `keys`: dotted settings to add as columns, e.g. the keys a hyper-parameter search varies)."""
    keys = list(keys)
    return pd.DataFrame([read_run(d, keys) for d in _unique(dirs)], columns=[*RUN_COLUMNS, *keys])


def load_history(dirs: Iterable[PathLike]) -> pd.DataFrame:
    """history.csv of every run that has one, stacked, with the run's identity columns (`IDENTITY`) first.
    EP and BP runs record different columns; the union is kept and absent values are NaN."""
    frames = []
    for d in _unique(dirs):
        path = d / "history.csv"
        if not path.is_file():  # a run that failed before its first epoch ended
            continue
        run = read_run(d)
        history = pd.read_csv(path)
        frames.append(history.assign(**{k: run[k] for k in IDENTITY})[[*IDENTITY, *history.columns]])
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY, *GENERIC_HISTORY])
    return pd.concat(frames, ignore_index=True)
