"""The command that starts one training run on N processes: what the pipeline's `train` rule runs for a run
with `resources.train.gpus` > 1 (one process per GPU) or `resources.train.nodes` > 1.

* outside SLURM: `torchrun --standalone --nproc-per-node N --no-python ep-core train ...` (one node, a
  free rendezvous port of torchrun's choosing). The pipeline's jobs then all run on this one host, so it
  never builds a multi-node torchrun: that needs a torchrun agent started on each node, which only the
  person (or the scheduler) holding those nodes can do (README: `torchrun --nnodes 2 --rdzv-backend c10d`
  on each node by hand). A multi-node command asked for outside SLURM is a one-line error.
* inside a SLURM allocation (`SLURM_JOB_ID` set: the pipeline's SLURM profile asks sbatch for
  `resources.train.nodes` nodes and nodes × gpus tasks and GPUs): `srun [--nodes M] --ntasks M*N
  --kill-on-bad-exit=1 ep-core train ...` over the allocation's M nodes (`SLURM_JOB_NUM_NODES`; the rule
  asks for exactly resources.train.nodes), with MASTER_ADDR the allocation's first node (`scontrol show
  hostnames`: where srun places task 0, and where the batch script runs) and MASTER_PORT a port free on it.

`gpus` is per node: a run spans nodes × gpus processes. A world of one process does not come here: it
trains in the job's own process, as always.
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

from ..training.distributed import first_host, free_port

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


def allocation_nodes(env: Mapping[str, str] | None = None) -> int:
    """The nodes of the SLURM allocation this process runs in; 1 outside SLURM."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return 1
    value = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(f"SLURM_JOB_NUM_NODES: expected an integer, got {value!r}") from None


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
    nprocs: int,
    args: Sequence[str],
    *,
    launcher: str,
    executable: str | None = None,
    threads: int = 1,
    nodes: int = 1,
) -> list[str]:
    """The command line that runs `ep-core ARGS` as `nprocs` data-parallel processes in all, over `nodes`
    nodes (srun only: torchrun here is one host's). `threads`: the CPUs each srun task gets (its torch
    threads)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: valid choices: {', '.join(LAUNCHERS)}")
    if nprocs < 2:
        raise ValueError(f"a launcher starts 2 or more processes, got {nprocs}; one trains in-process")
    if nodes < 1 or nprocs < nodes:
        raise ValueError(f"{nprocs} processes cannot span {nodes} nodes: each node runs at least one")
    if nodes > 1 and launcher == "torchrun":
        raise ValueError(
            f"resources.train.nodes: {nodes} nodes need the SLURM profile (--profile slurm): outside SLURM "
            "the pipeline runs on this one host; start `torchrun --nnodes` on each node by hand (README)"
        )
    exe = executable or ep_core_executable()
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        return [*torchrun, "--standalone", "--nproc-per-node", str(nprocs), "--no-python", exe, *args]
    spread = ["--nodes", str(nodes)] if nodes > 1 else []
    return ["srun", *spread, "--ntasks", str(nprocs), f"--cpus-per-task={threads}", "--kill-on-bad-exit=1",
            exe, *args]  # fmt: skip


def first_node(env: Mapping[str, str]) -> str:
    """The allocation's first node, where the batch script runs and srun places task 0: the first of
    `scontrol show hostnames $SLURM_JOB_NODELIST` (its own node-list parser, else ours); this host's name
    when the job names no nodes."""
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes:
        return socket.gethostname()
    try:
        shown = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               env=dict(env), timeout=10).stdout.split()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        shown = []
    return shown[0] if shown else first_host(nodes)


def launch_env(launcher: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the launched processes: for srun, where rank 0 listens (the allocation's first
    node, which is this host, and a port free on it)."""
    out = dict(os.environ if env is None else env)
    if launcher == "srun":
        if "MASTER_ADDR" not in out:
            out["MASTER_ADDR"] = first_node(out)
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


def launch(gpus: int, args: Sequence[str], *, threads: int, stream: IO[str], nodes: int | None = None) -> int:
    """Run `ep-core ARGS` on `gpus` processes per node over `nodes` nodes (None: the SLURM allocation's, 1
    outside SLURM) and return its exit status. `threads`: the job's CPUs, shared by its processes (each
    gets `--threads`, after ARGS)."""
    launcher = launcher_for()
    nodes = allocation_nodes() if nodes is None else nodes
    nprocs = nodes * gpus
    per_process = max(1, threads // nprocs)
    args = [*args, "--threads", str(per_process)]
    command = launch_command(nprocs, args, launcher=launcher, threads=per_process, nodes=nodes)
    print(f"launching {nprocs} processes: {' '.join(command)}", file=stream, flush=True)
    return run_launched(command, launch_env(launcher), stream)


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
    nodes: int | None = None,
) -> int:
    """The pipeline's training job: one run mirrored to MLflow under the pipeline's parent run (`init`:
    its init.json), a diverged run counted as a result. `threads`: the job's CPUs, shared by its
    processes. `gpus`: per node; `nodes`: None for the SLURM allocation's (the train rule asks sbatch for
    resources.train.nodes), 1 outside SLURM. One process in all: in this process, exactly as `ep-core
    train`; more: launched on nodes × gpus processes."""
    if gpus * (allocation_nodes() if nodes is None else nodes) == 1:
        from ..tracking.mirror import RunTracker
        from ..training.config import build_config
        from ..training.run import train

        tracker = RunTracker.from_file(init, name, tags=dict(tags))
        return train(
            build_config({}, list(overrides)), out, tracker=tracker, threads=threads, diverged_ok=True
        )
    args = train_args(out, overrides, mlflow=init, run_name=name, tags=tags, diverged_ok=True)
    return launch(gpus, args, threads=threads, stream=stream, nodes=nodes)
