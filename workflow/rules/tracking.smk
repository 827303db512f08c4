# MLflow: the database, experiment and the pipeline's parent run are created once, by one process,
# before any training job writes to them (a sqlite store is also created under a file lock); the summary
# first sends MLflow whatever an outage held back (`ep-core sync`), so MLflow ends equal to the run dirs.


rule mlflow_init:
    output:
        "results/mlflow/init.json",
    log:
        "logs/mlflow/init.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        experiment=config["mlflow"]["experiment"],
        tracking_uri=config["mlflow"]["tracking_uri"],
    script:
        "../scripts/mlflow_init.py"


rule mlflow_summary:
    input:
        init="results/mlflow/init.json",
        metrics=run_files(RUNS, "metrics.json"),
        aggregates=parent_artifacts,
    output:
        "results/mlflow/summary.json",
    log:
        "logs/mlflow/summary.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/mlflow_summary.py"
