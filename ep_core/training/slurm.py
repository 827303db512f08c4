"""A run longer than its SLURM time limit: SLURM's warning before the limit, a checkpoint, and the same job
back on the queue, slice after slice, until the run completes.

The pipeline's SLURM profile submits the training job with `--requeue --signal=URG@300`: slurmctld sends
SIGURG to every process of the job's steps 300 to 330 s before the limit (it looks every 30 s). Those
processes are not only the training: under the SLURM plugin the rule runs as `srun -n1 python -m snakemake
...`, whose snakemake, shell and any DataLoader workers are signalled too, and USR1/USR2 would kill them
(their default action). SIGURG's default action is to be ignored and nothing else sends it, so only the
process that handles it, the training, reacts. (`B:` would signal only the plugin's `sbatch --wrap` shell,
which neither traps nor forwards signals.) On it the run stops at the next batch boundary as on SIGTERM,
saves its checkpoint, and asks `scontrol requeue $SLURM_JOB_ID`: SLURM ends this slice and later starts the
same job script again under the same job id, which resumes from the checkpoint; to the pipeline, which
polls the job's state, a requeued job is still pending or running, not failed.

SIGTERM (scancel, preemption, a requeue from outside, a limit reached without a warning) still only
checkpoints and stops: SLURM alone decides whether that job comes back. Outside a SLURM job nothing here is
used and SIGURG stays ignored.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from types import FrameType

from .checkpoint import StopRequest

WARNING = signal.SIGURG  # what the profile's `--signal=URG@...` sends before the time limit
JOB_ENV = "SLURM_JOB_ID"
# scontrol retries an unreachable slurmctld for a while; the warning left minutes, the limit will not wait.
SCONTROL_TIMEOUT_S = 30.0


def job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The SLURM job this process runs in, or None outside SLURM."""
    env = os.environ if env is None else env
    return env.get(JOB_ENV) or None


class WarnedStop(StopRequest):
    """StopRequest that also takes SLURM's time-limit warning. A stop already asked for (scancel's SIGTERM,
    Ctrl-C) is never turned into a requeue by a warning that comes after it."""

    SIGNALS = (*StopRequest.SIGNALS, WARNING)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == WARNING and self.signal is not None:
            return
        self.signal = signum


def stop_request(env: Mapping[str, str] | None = None) -> StopRequest:
    """The training loop's stop flag: inside a SLURM job it also takes the time-limit warning."""
    return WarnedStop() if job_id(env) else StopRequest()


def requeue(job: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str | None:
    """Ask SLURM to put `job` back on the queue: None once it has, else why not (one line)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return "scontrol is not on PATH"
    try:
        done = run([scontrol, "requeue", job], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scontrol requeue {job}: {error}"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
        return f"scontrol requeue {job}: {why[-1]}"
    return None


def requeue_if_warned(
    signum: int | None, say: Callable[[str], None], env: Mapping[str, str] | None = None
) -> bool:
    """After a run stopped on `signum`, its checkpoint saved: on SLURM's warning, put this process's job
    back on the queue (True once SLURM has it). Call on one rank only: one request per job."""
    job = job_id(env)
    if signum != WARNING or job is None:
        return False
    problem = requeue(job)
    if problem is None:
        say(f"SLURM job {job} requeued before its time limit: it resumes from this checkpoint once restarted")
        return True
    say(
        f"warning: SLURM job {job} could not be requeued ({problem}); it ends at its time limit, and "
        "resubmitting it (the profile's retries, or rerunning the pipeline) resumes from this checkpoint"
    )
    return False
