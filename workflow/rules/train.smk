# One training run per (dataset, arch, activation, seed) of the grid. The checkpoint lives in the run
# directory but is not a declared output, so Snakemake never deletes it: a re-submitted job resumes.


rule train:
    input:
        init="results/mlflow/init.json",
        data=data_marker,
    output:
        metrics="results/runs/{dataset}/{arch}/{activation}/seed{seed}/metrics.json",
        history="results/runs/{dataset}/{arch}/{activation}/seed{seed}/history.csv",
        model="results/runs/{dataset}/{arch}/{activation}/seed{seed}/model.pt",
        weights="results/runs/{dataset}/{arch}/{activation}/seed{seed}/weights_summary.csv",
        histograms="results/runs/{dataset}/{arch}/{activation}/seed{seed}/weights_histograms.json",
    log:
        "logs/train/{dataset}/{arch}/{activation}/seed{seed}.log",
    conda:
        "../../environment.yml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=1,
        runtime=config["resources"]["train"]["runtime"],
        mem_mb=config["resources"]["train"]["mem_mb"],
    params:
        out="results/runs/{dataset}/{arch}/{activation}/seed{seed}",
        name="{dataset}-{arch}-{activation}-s{seed}",
        overrides=train_overrides,
        tags=train_tags,
    script:
        "../scripts/train.py"
