"""Rule train: one ep-core training run, mirrored to MLflow under the pipeline's parent run.

A diverged run is a result (recorded with status 'diverged' and counted by the tables), so it exits 0;
a crash exits non-zero and the job fails (re-running resumes from the checkpoint)."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "a")

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
sys.exit(status)
