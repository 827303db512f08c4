"""The command that starts one training run on N processes: what the pipeline's `train` rule runs for a run
with `resources.train.gpus` > 1 (one process per GPU).

* outside SLURM: `torchrun --standalone --nproc-per-node N --no-python ep-core train ...` (one node, a
  free rendezvous port of torchrun's choosing);
* inside a SLURM allocation (`SLURM_JOB_ID` set: the pipeline's SLURM profile asks sbatch for N tasks and
  N GPUs): `srun --ntasks N --kill-on-bad-exit=1 ep-core train ...`, with MASTER_ADDR/MASTER_PORT set to
  this host (the allocation's first node, where srun places task 0) and a port free on it.

A run with one GPU does not come here: it trains in the job's own process, as always.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from ..training.distributed import free_port

LAUNCHERS = ("torchrun", "srun")


def ep_core_executable() -> str:
    """The `ep-core` script beside this Python (the environment the job runs in), else the one on PATH."""
    here = Path(sys.executable).parent / "ep-core"
    if here.exists():
        return str(here)
    found = shutil.which("ep-core")
    if found is None:
        raise FileNotFoundError("ep-core: not installed beside this Python nor on PATH (pip install -e .)")
    return found


def launcher_for(env: Mapping[str, str] | None = None) -> str:
    """srun inside a SLURM allocation, torchrun elsewhere."""
    env = os.environ if env is None else env
    return "srun" if env.get("SLURM_JOB_ID") else "torchrun"


def train_args(
    out: str,
    overrides: Sequence[str],
    *,
    mlflow: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    threads: int | None = None,
    diverged_ok: bool = False,
) -> list[str]:
    """`ep-core train` arguments for one run (`overrides`: its key=value settings)."""
    args = ["train", "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    if mlflow is not None:
        args += ["--mlflow", str(mlflow)]
        if run_name is not None:
            args += ["--run-name", run_name]
        for key, value in (tags or {}).items():
            args += ["--tag", f"{key}={value}"]
    if threads is not None:
        args += ["--threads", str(threads)]
    if diverged_ok:
        args.append("--diverged-ok")
    return args


def launch_command(
    nprocs: int, args: Sequence[str], *, launcher: str, executable: str | None = None, threads: int = 1
) -> list[str]:
    """The command line that runs `ep-core ARGS` as `nprocs` data-parallel processes. `threads`: the CPUs
    each srun task gets (its torch threads)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: valid choices: {', '.join(LAUNCHERS)}")
    if nprocs < 2:
        raise ValueError(f"a launcher starts 2 or more processes, got {nprocs}; one trains in-process")
    exe = executable or ep_core_executable()
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        return [*torchrun, "--standalone", "--nproc-per-node", str(nprocs), "--no-python", exe, *args]
    return ["srun", "--ntasks", str(nprocs), f"--cpus-per-task={threads}", "--kill-on-bad-exit=1", exe, *args]


def launch_env(launcher: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the launched processes: for srun, where rank 0 listens (this host, a free port)."""
    out = dict(os.environ if env is None else env)
    if launcher == "srun":
        out.setdefault("MASTER_ADDR", socket.gethostname())
        out.setdefault("MASTER_PORT", str(free_port()))
    return out


def run_launched(command: Sequence[str], env: Mapping[str, str], stream: IO[str]) -> int:
    """Run `command` with its output on `stream` (the job's log) and return its exit status. SIGTERM to
    this process is passed on, so a cancelled job still checkpoints; SIGINT (Ctrl-C) reaches the child from
    the terminal, as it shares this process group, and only waits here (a second one would cut short
    torchrun's own shutdown of its workers)."""
    stream.flush()
    child = subprocess.Popen(list(command), env=dict(env), stdout=stream, stderr=subprocess.STDOUT)

    def forward(signum, frame) -> None:
        child.send_signal(signum)

    def wait(signum, frame) -> None:
        return None

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGINT: signal.signal(signal.SIGINT, wait),
    }
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_job(
    gpus: int,
    out: str,
    overrides: Sequence[str],
    *,
    init: str,
    name: str,
    tags: Mapping[str, str],
    threads: int,
    stream: IO[str],
) -> int:
    """The pipeline's training job: one run mirrored to MLflow under the pipeline's parent run (`init`:
    its init.json), a diverged run counted as a result. `threads`: the job's CPUs, shared by its
    processes. One GPU: in this process, exactly as `ep-core train`; more: launched on `gpus` processes."""
    if gpus == 1:
        from ..tracking.mirror import RunTracker
        from ..training.config import build_config
        from ..training.run import train

        tracker = RunTracker.from_file(init, name, tags=dict(tags))
        return train(
            build_config({}, list(overrides)), out, tracker=tracker, threads=threads, diverged_ok=True
        )
    per_process = max(1, threads // gpus)
    launcher = launcher_for()
    args = train_args(out, overrides, mlflow=init, run_name=name, tags=tags, threads=per_process,
                      diverged_ok=True)  # fmt: skip
    command = launch_command(gpus, args, launcher=launcher, threads=per_process)
    print(f"launching {gpus} processes: {' '.join(command)}", file=stream, flush=True)
    return run_launched(command, launch_env(launcher), stream)
