# One training run per run directory of the grid (ep_core.pipeline.grid.RunSpec.path). The checkpoint lives in
# the run directory but is not a declared output, so Snakemake never deletes it: a re-submitted job resumes.
# A run on resources.train.gpus > 1 GPUs is launched by the job on that many processes (ep_core.pipeline.launch:
# torchrun here, srun inside a SLURM allocation of as many tasks). Under SLURM a run spans resources.train.nodes
# nodes (sbatch --nodes), its gpus on each.


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
    threads: train_resource("threads")
    resources:
        gpu=train_resource("gpu"),
        mpi=train_resource("mpi"),
        tasks=train_resource("tasks"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
        nodes=grid.train_nodes(config),
        runtime=config["resources"]["train"]["runtime"],
        mem_mb=train_resource("mem_mb"),
    params:
        out="results/runs/{run}",
        name=train_name,
        overrides=train_overrides,
        tags=train_tags,
        gpus=train_gpus,
    script:
        "../scripts/train.py"
