"""Rule train: one ep-core training run, mirrored to MLflow under the pipeline's parent run.

A diverged run is a result (recorded with status 'diverged' and counted by the tables), so it exits 0;
a crash exits non-zero and the job fails (re-running resumes from the checkpoint). The log records when
each attempt started and finished (the pipeline test checks that no profile job overlaps it)."""

import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "a")
print(f"job started at {time.time():.6f}", flush=True)

from ep_core.config import build_config
from ep_core.tracking import RunTracker
from ep_core.training import train

params = snakemake.params
tracker = RunTracker.from_file(snakemake.input.init, params.name, tags=params.tags)
status = train(
    build_config({}, list(params.overrides)),
    params.out,
    tracker=tracker,
    threads=snakemake.threads,
    diverged_ok=True,
)
print(f"job finished at {time.time():.6f}", flush=True)
sys.exit(status)
