# Helpers for the rules: every answer comes from ep_core.pipeline.grid, which is where the logic is tested.
from snakemake.io import report as in_report  # `report` itself is a Snakefile keyword

from ep_core.pipeline import grid

# A bad dataset, arch or setting fails here, before any job starts.
RUNS = grid.validate_grid(config)
RUN_BY_PATH = {run.path: run for run in RUNS}
DOWNLOADS = grid.datasets_to_download(config)
GPUS = grid.gpus_by_path(config)
PROFILES = {spec.name: spec for spec in grid.profile_specs(config)}


wildcard_constraints:
    dataset="[a-z0-9_]+",
    run=r"[a-z0-9_]+/[a-z0-9_]+/[a-z0-9_]+/(?:[^/]+/)?seed\d+",
    profile="[A-Za-z0-9_.-]+",


def run_of(wildcards):
    return RUN_BY_PATH[wildcards.run]


def run_files(runs, name):
    return [f"results/runs/{run.path}/{name}" for run in runs]


def data_marker(wildcards):
    dataset = run_of(wildcards).dataset
    if dataset in DOWNLOADS:
        return f"{config['data_dir']}/.{dataset}.ready"
    return []


def train_overrides(wildcards):
    return grid.run_overrides(config, run_of(wildcards))


def train_tags(wildcards):
    return grid.run_tags(config, run_of(wildcards))


def train_name(wildcards):
    return run_of(wildcards).name


def train_gpus(wildcards):
    return GPUS[wildcards.run]


def train_resource(name):
    """One of the train rule's threads/resources (grid.train_job_resources): functions, so that a cluster
    profile's set-resources/set-threads replaces them unevaluated; None leaves a resource unset.
    """

    def value(wildcards):
        return grid.train_job_resources(config, GPUS[wildcards.run])[name]

    return value


def every_core(wildcards):
    """Threads of a job that must run alone: every core of the run (`--cores`), so no other job starts
    beside it. A function, so that a cluster profile's `set-threads` replaces it unevaluated.
    """
    return workflow.cores


def profile_args(wildcards):
    return " ".join(grid.profile_args(config, PROFILES[wildcards.profile]))


# What the aggregation rules read and write (the runs of each study kind, the figures).
MAIN = grid.runs_of_kind(config, "main")
RESIDUAL = grid.runs_of_kind(config, "residual_ablation")
ACTIVATION = grid.runs_of_kind(config, "activation_ablation")
DEPTH = grid.runs_of_kind(config, "depth_ablation")
SEARCH = grid.runs_of_kind(config, "search")
CONVERGENCE = grid.convergence_runs(config)
FIDELITY = grid.fidelity_runs(config)
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


# The aggregation rules this grid has: only they are planned, so their tables and figures (and no empty
# one of a study the grid lacks) are what the report and the pipeline's parent run in MLflow carry.
AGGREGATIONS = grid.aggregations(config)


def aggregate_outputs():
    return [path for name in AGGREGATIONS for path in getattr(rules, name).output]


def parent_artifacts(wildcards):
    return aggregate_outputs()


def final_targets():
    return ["results/mlflow/summary.json", *aggregate_outputs()]
