# Helpers for the rules: every answer comes from ep_core.grid, which is where the logic is tested.
import json

from ep_core import grid

RUNS = grid.validate_grid(
    config
)  # a bad dataset, arch or setting fails here, before any job
PROFILES = {spec.name: spec for spec in grid.profile_specs(config)}


wildcard_constraints:
    dataset="[a-z0-9_]+",
    arch="[a-z0-9_]+",
    activation="[a-z0-9_]+",
    seed=r"\d+",
    profile="[A-Za-z0-9_.-]+",


def run_of(wildcards):
    return grid.RunSpec(
        wildcards.dataset, wildcards.arch, wildcards.activation, int(wildcards.seed)
    )


def run_files(runs, name):
    return [f"results/runs/{run.path}/{name}" for run in runs]


def data_marker(wildcards):
    if wildcards.dataset in grid.TORCHVISION_DATASETS:
        return f"{config['data_dir']}/.{wildcards.dataset}.ready"
    return []


def train_overrides(wildcards):
    return grid.run_overrides(config, run_of(wildcards))


def train_tags(wildcards):
    run = run_of(wildcards)
    algorithm = "bp" if run.family == "bp" else "ep"
    return {
        "dataset": run.dataset,
        "architecture": run.arch,
        "activation": run.activation,
        "algorithm": algorithm,
        "seed": str(run.seed),
    }


def profile_args(wildcards):
    return " ".join(grid.profile_args(config, PROFILES[wildcards.profile]))


def final_targets():
    targets = ["results/mlflow/summary.json", *AGGREGATES]
    return targets
