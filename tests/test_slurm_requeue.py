"""SLURM's time-limit warning without SLURM: SIGURG → checkpoint → `scontrol requeue $SLURM_JOB_ID` (a fake
scontrol on PATH records the call), SIGTERM → checkpoint only, and outside a SLURM job SIGURG is ignored as
before. The real cluster's version is tests/pipeline/test_time_limit.py."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_distributed import KILL, torchrun
from test_training import SLOW_EPOCHS, _history_rows, _wait_for, as_set_args, assert_same_run

from ep_core.training import slurm
from ep_core.training.checkpoint import StopRequest
from ep_core.training.config import build_config
from ep_core.training.run import train

JOB = "4242"
# test_training's slow run, shorter: 3 epochs of 24 batches, so each slice stops inside an epoch. Trained on
# one torch thread: two threads' OpenMP barriers spin against other load on 2 cores (~100x slower).
SLICED = {
    **SLOW_EPOCHS,
    "data": {**SLOW_EPOCHS["data"], "synthetic_train": 176},
    "train": {**SLOW_EPOCHS["train"], "epochs": 3},
}
TIMEOUT_S = 900  # a busy 2-core machine


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch) -> Path:
    """A `scontrol` first on PATH that appends its arguments to calls.txt and exits with the status in
    status.txt (0 unless a test writes another, with its message on stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "status.txt").write_text("0")
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/calls.txt\n'
        f"status=$(cat {tmp_path}/status.txt)\n"
        '[ "$status" = 0 ] || echo "scontrol: error: Job is not requeueable" >&2\n'
        'exit "$status"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls.txt"


def test_only_a_slurm_job_takes_the_warning_and_a_stop_is_never_turned_into_a_requeue():
    assert type(slurm.stop_request({})) is StopRequest
    with slurm.stop_request({"SLURM_JOB_ID": JOB}) as stop:
        assert signal.getsignal(slurm.WARNING) == stop._handle
        signal.raise_signal(slurm.WARNING)
        assert stop.signal == slurm.WARNING
        signal.raise_signal(signal.SIGTERM)  # scancel after the warning: a plain stop
        signal.raise_signal(slurm.WARNING)
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(slurm.WARNING) == signal.SIG_DFL  # ignored again, as for any process


def test_the_warning_requeues_the_job_and_nothing_else_does(fake_scontrol):
    said: list[str] = []
    env = {"SLURM_JOB_ID": JOB}
    assert not slurm.requeue_if_warned(signal.SIGTERM, said.append, env)  # preemption: SLURM decides
    assert not slurm.requeue_if_warned(slurm.WARNING, said.append, {})  # outside SLURM
    assert not fake_scontrol.exists() and not said
    assert slurm.requeue_if_warned(slurm.WARNING, said.append, env)
    assert fake_scontrol.read_text() == f"requeue {JOB}\n"
    assert said == [
        f"SLURM job {JOB} requeued before its time limit: it resumes from this checkpoint once restarted"
    ]


def test_a_refused_requeue_is_one_warning_line(fake_scontrol, monkeypatch):
    (fake_scontrol.parent / "status.txt").write_text("1")
    said: list[str] = []
    assert not slurm.requeue_if_warned(slurm.WARNING, said.append, {"SLURM_JOB_ID": JOB})
    assert (
        len(said) == 1
        and "could not be requeued (scontrol requeue 4242: scontrol: error: Job is not" in said[0]
    )
    monkeypatch.setenv("PATH", str(fake_scontrol.parent / "nowhere"))
    assert slurm.requeue(JOB) == "scontrol is not on PATH"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert train(build_config(SLICED), out, threads=1) == 0
    return out


@contextmanager
def training(out: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`ep-core train` of SLICED in `out` (started or resumed), killed if the test fails while it runs."""
    args = [sys.executable, "-m", "ep_core.cli", "train", "--out", str(out), "--threads", "1"]
    args += as_set_args(SLICED)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _signal_mid_run(out: Path, signum: int, env: dict[str, str], rows: int) -> tuple[int, str]:
    """Start (or resume) the run and send `signum` once history.csv has `rows` epochs: this process's."""
    with training(out, env) as process:
        _wait_for(lambda: _history_rows(out) >= rows, process, timeout=TIMEOUT_S)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, stderr


def test_in_a_slurm_job_the_warning_checkpoints_requeues_and_the_rerun_equals_an_uninterrupted_run(
    tmp_path, fake_scontrol, uninterrupted
):
    env = {**os.environ, "SLURM_JOB_ID": JOB}
    out = tmp_path / "sliced"
    status, stderr = _signal_mid_run(out, slurm.WARNING, env, rows=1)
    assert status == 128 + slurm.WARNING, stderr
    assert "stopped by signal 23; checkpoint saved" in stderr and f"SLURM job {JOB} requeued" in stderr
    assert fake_scontrol.read_text() == f"requeue {JOB}\n"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["slices"] == 1
    # SIGTERM (a requeue from outside, preemption) checkpoints too, and leaves the requeue to SLURM.
    status, stderr = _signal_mid_run(out, signal.SIGTERM, env, rows=_history_rows(out) + 1)
    assert status == 128 + signal.SIGTERM and "resuming at epoch" in stderr, stderr
    assert fake_scontrol.read_text() == f"requeue {JOB}\n"
    with training(out, env) as process:
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert_same_run(uninterrupted, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["slices"] == 3 and metrics["slurm_job_id"] == JOB
    assert json.loads((uninterrupted / "metrics.json").read_text())["slices"] == 1


def test_outside_slurm_the_warning_signal_is_ignored_as_before(tmp_path, fake_scontrol):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = tmp_path / "local"
    with training(out, env) as process:
        _wait_for(lambda: _history_rows(out) >= 1, process, timeout=TIMEOUT_S)
        process.send_signal(slurm.WARNING)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0 and "stopped by signal" not in stderr, stderr
    assert json.loads((out / "metrics.json").read_text())["slices"] == 1 and not fake_scontrol.exists()


def _processes_of(out: Path) -> list[int]:
    """The processes whose command line names run directory `out`: torchrun and its workers (each in a
    session of its own, so a process group does not reach them)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(out).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_two_ranks_stop_on_the_warning_after_the_same_batch_and_rank_0_alone_requeues(
    tmp_path, fake_scontrol, monkeypatch
):
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    out = tmp_path / "ranks"
    process = torchrun(out, KILL, start_new_session=True)
    try:
        _wait_for(lambda: _history_rows(out) >= 1, process, timeout=TIMEOUT_S)
        for pid in _processes_of(out):  # as SLURM signals a step: every process (torchrun ignores it)
            os.kill(pid, slurm.WARNING)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert stderr.count(f"SLURM job {JOB} requeued") == 1, stderr[-3000:]
    assert fake_scontrol.read_text() == f"requeue {JOB}\n"
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["slices"] == 1 and not (out / "metrics.json").exists()
