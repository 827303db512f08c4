"""Rule train: one ep-core training run, mirrored to MLflow under the pipeline's parent run.

A diverged run is a result (recorded with status 'diverged' and counted by the tables), so it exits 0;
a crash exits non-zero and the job fails (re-running resumes from the checkpoint). The log is the run
directory's train.log, which every attempt appends to (ep_core.pipeline.joblog: Snakemake's log path is a
link to it); it records when each attempt started and finished (the pipeline test checks that no profile
job overlaps one). A run on more than one GPU is launched on that many processes
(ep_core.pipeline.launch.train_job)."""

import sys
import time

started = time.time()  # before importing ep_core (and torch): the job's own start

from ep_core.pipeline.joblog import open_job_log

sys.stderr = sys.stdout = open_job_log(snakemake.log[0], snakemake.params.out)
print(f"job started at {started:.6f}", flush=True)

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
