# One training run per run directory of the grid (ep_core.grid.RunSpec.path). The checkpoint lives in
# the run directory but is not a declared output, so Snakemake never deletes it: a re-submitted job resumes.


rule train:
    input:
        init="results/mlflow/init.json",
        data=data_marker,
    output:
        metrics="results/runs/{run}/metrics.json",
        history="results/runs/{run}/history.csv",
        model="results/runs/{run}/model.pt",
        weights="results/runs/{run}/weights_summary.csv",
        histograms="results/runs/{run}/weights_histograms.json",
    log:
        "logs/train/{run}.log",
    conda:
        "../../environment.yml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=1,
        runtime=config["resources"]["train"]["runtime"],
        mem_mb=config["resources"]["train"]["mem_mb"],
    params:
        out="results/runs/{run}",
        name=train_name,
        overrides=train_overrides,
        tags=train_tags,
    script:
        "../scripts/train.py"
