# Reproduction pipeline for "Scaling Equilibrium Propagation to Deeper Neural Network Architectures".
# The grid (which runs, which studies, which settings) is config.yaml; all logic lives in ep_core.
from snakemake.utils import min_version, validate

from ep_core.tracking.parent import mark_parent, pipeline_status
from ep_core.pipeline.grid import drop_nulls

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"


drop_nulls(config)  # a --configfile drops a study (or profiling) by setting it to null

validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/aggregate.smk"


# The pipeline's parent MLflow run follows the outcome: RUNNING while jobs run, FINISHED on success,
# FAILED when a job fails, KILLED when interrupted (Ctrl-C). MLflow being down never fails the pipeline.
MLFLOW_INIT = "results/mlflow/init.json"


onstart:
    mark_parent(MLFLOW_INIT, "RUNNING")


onsuccess:
    mark_parent(MLFLOW_INIT, "FINISHED")


onerror:
    mark_parent(MLFLOW_INIT, pipeline_status(log, failed=True))


rule all:
    default_target: True
    input:
        final_targets(),
