"""Rule train: one ep-core training run, mirrored to MLflow under the pipeline's parent run.

A diverged run is a result (recorded with status 'diverged' and counted by the tables), so it exits 0;
a crash exits non-zero and the job fails (re-running resumes from the checkpoint). The log records when
each attempt started and finished (the pipeline test checks that no profile job overlaps it). A run on
more than one GPU is launched on that many processes (ep_core.pipeline.launch.train_job)."""

import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "a")
print(f"job started at {time.time():.6f}", flush=True)

from ep_core.pipeline.launch import train_job

params = snakemake.params
status = train_job(
    params.gpus,
    params.out,
    list(params.overrides),
    init=snakemake.input.init,
    name=params.name,
    tags=params.tags,
    threads=snakemake.threads,
    stream=sys.stdout,
)
print(f"job finished at {time.time():.6f}", flush=True)
sys.exit(status)
