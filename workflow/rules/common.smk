# Helpers for the rules: every answer comes from ep_core.grid, which is where the logic is tested.
from snakemake.io import report as in_report  # `report` itself is a Snakefile keyword

from ep_core import grid

# A bad dataset, arch or setting fails here, before any job starts.
RUNS = grid.validate_grid(config)
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


def every_core(wildcards):
    """Threads of a job that must run alone: every core of the run (`--cores`), so no other job starts
    beside it. A function, so that a cluster profile's `set-threads` replaces it unevaluated.
    """
    return workflow.cores


def profile_args(wildcards):
    return " ".join(grid.profile_args(config, PROFILES[wildcards.profile]))


# What the aggregation rules read and write (the runs of each study kind, the figures).
MAIN = grid.runs_of_kind(config, "main")
ABLATIONS = grid.runs_of_kind(config, "activation_ablation") + grid.runs_of_kind(
    config, "residual_ablation"
)
CONVERGENCE = grid.convergence_runs(config)
PAIR = grid.weight_pair(config)
PAPER = f"{workflow.basedir}/reference/paper_results.csv"


def figure(name, caption, category):
    return [
        in_report(
            f"results/figures/{name}.png",
            caption=f"../report/{caption}.rst",
            category=category,
        ),
        f"results/figures/{name}.pdf",
    ]


AGGREGATES = [
    "results/tables/main.md",
    "results/tables/ablations.md",
    "results/figures/residual_ablation.png",
    "results/tables/weights.md",
    "results/figures/convergence.png",
]
if PROFILES:
    AGGREGATES.append("results/tables/profiles.md")


def final_targets():
    return ["results/mlflow/summary.json", *AGGREGATES]
