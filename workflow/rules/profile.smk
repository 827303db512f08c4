# Timing and memory profiles: `ep-core bench` on the training hardware, one job per configuration.
# A profile times the hardware, not the neighbours: it reserves every core the workflow was given
# (`threads: every_core`, i.e. workflow.cores), so locally no other job runs beside it; under SLURM it
# asks for a whole node instead (profiles/slurm: `slurm_extra: --exclusive`, and `set-threads` so that
# it does not also take the submit host's whole --cores budget). It still times with the configured
# `resources.profile.threads` (what a training job uses), set as OMP_NUM_THREADS. The log records when
# the job started and finished (the pipeline test checks that no profile overlaps a training job).


rule profile:
    output:
        "results/profiles/{profile}.json",
    log:
        "logs/profile/{profile}.log",
    conda:
        "../../environment.yml"
    threads: every_core
    resources:
        gpu=1,
        runtime=config["resources"]["profile"]["runtime"],
        mem_mb=config["resources"]["profile"]["mem_mb"],
    params:
        args=profile_args,
        threads=config["resources"]["profile"]["threads"],
    shell:
        "echo job started at $(date +%s.%N) > {log}; "
        "OMP_NUM_THREADS={params.threads} ep-core bench {params.args} --json --output {output} 2>> {log}; "
        "echo job finished at $(date +%s.%N) >> {log}"
