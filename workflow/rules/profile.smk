# Timing and memory profiles: `ep-core bench` on the training hardware, one job per configuration.


rule profile:
    output:
        "results/profiles/{profile}.json",
    log:
        "logs/profile/{profile}.log",
    conda:
        "../../environment.yml"
    threads: config["resources"]["profile"]["threads"]
    resources:
        gpu=1,
        runtime=config["resources"]["profile"]["runtime"],
        mem_mb=config["resources"]["profile"]["mem_mb"],
    params:
        args=profile_args,
    shell:
        "OMP_NUM_THREADS={threads} ep-core bench {params.args} --json --output {output} 2> {log}"
