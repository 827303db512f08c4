"""The training job's log, whole across attempts.

Snakemake deletes a job's `log:` file before each attempt. A training run lives through several: a SLURM
slice requeued at its time limit, a rerun after a crash or a kill (`--rerun-incomplete`), a retry. The log
of `logs/train/<run>.log` alone would then hold the last attempt's lines only. The job therefore writes to
`train.log` in the run directory (which Snakemake never cleans: the checkpoint lives there too), every
attempt appending, and makes Snakemake's log path a second name of that file: a hard link, or a relative
symbolic link on another file system. Both paths read the whole history of the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

RUN_LOG = "train.log"  # in the run directory: every attempt's output, appended


def open_job_log(job_log: str | Path, run_dir: str | Path) -> IO[str]:
    """The stream a training job writes to: `run_dir`/train.log opened for appending, with `job_log`
    (Snakemake's log path) linked to it. Lines a `job_log` of its own already holds (one written before
    the link existed) are appended first. Where the run directory cannot be written, `job_log` alone (the
    run then fails with its own one-line error about the directory)."""
    job_log, run_log = Path(job_log), Path(run_dir) / RUN_LOG
    job_log.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_log.parent.mkdir(parents=True, exist_ok=True)
        stream = run_log.open("a")
    except OSError:
        return job_log.open("a")
    if _same_file(job_log, run_log):
        return stream
    if job_log.is_file() and not job_log.is_symlink():
        with job_log.open() as earlier:
            shutil.copyfileobj(earlier, stream)
        stream.flush()
    job_log.unlink(missing_ok=True)
    try:
        os.link(run_log, job_log)
    except OSError:  # another file system, or one without hard links
        job_log.symlink_to(os.path.relpath(run_log, job_log.parent))
    return stream


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # `a` missing, or a dangling link
        return False
