"""MLflow as a mirror: a server outage mid-run, a flaky store, 16 first writers on a fresh sqlite file, a
kill before the first checkpoint — the run directory stays the truth and MLflow ends level with it."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ep_core.cli import main
from ep_core.tracking import mirror, parent, store
from ep_core.training.config import build_config
from ep_core.training.run import train
from ep_core.training.rundir import RECORDS, read_history

BIN = Path(sys.executable).parent
# A tiny synthetic run: 4 batches per epoch, a second or so per epoch on one CPU thread.
TINY = {
    "data": {"name": "synthetic", "synthetic_train": 64, "synthetic_test": 16},
    "model": {"arch": "hopfield_resnet13", "width": 0.0625},
    "ep": {"free_iterations": 4, "nudge_iterations": 2, "eval_iterations": 4},
    "train": {"epochs": 6, "batch_size": 16, "eval_batch_size": 16, "device": "cpu"},
}


def write_config(path: Path, **train) -> Path:
    config = json.loads(json.dumps(TINY))
    config["train"].update(train)
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `mlflow server` on 127.0.0.1 (one worker, no job runner), in its own process group."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.process = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, wait: float = 90) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + wait
        while time.time() < deadline:
            assert self.process.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server did not answer in {wait} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, free_port())
    yield s
    s.stop()


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def assert_level_with_run_dir(client, out: Path, epochs: int) -> None:
    """The MLflow run equals the run directory: every epoch of history.csv, the summary, status, files."""
    link = json.loads((out / "mlflow.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    run = client.get_run(link["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ep_core.status"] == metrics["status"]
    history = read_history(out)
    assert len(history) == epochs == metrics["epochs_completed"]
    for key in ("test_acc", "train_loss"):
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert logged == {row["epoch"]: row[key] for row in history}, key
    assert run.data.metrics["summary.final.test_acc"] == metrics["final"]["test_acc"]
    assert run.data.params["train.epochs"] == str(epochs)
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert set(RECORDS) <= files


def test_a_server_outage_never_stops_the_run_and_sync_makes_mlflow_equal_the_run_dir(tmp_path, server):
    server.start()
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml")
    env = {**os.environ, "EP_CORE_MLFLOW_TIMEOUT": "5", "PYTHONPATH": str(Path(__file__).parents[1])}
    job = subprocess.Popen(
        [sys.executable, "-m", "ep_core.cli", "train", "--config", str(config), "--out", str(out),
         "--mlflow", server.uri, "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 120
    while len(read_history(out)) < 2:  # the server goes away after epoch 2
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.05)
    server.stop()
    stopped = time.time()
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr
    assert time.time() - stopped < 60  # seconds per call, not MLflow's minutes of retries
    warnings = [line for line in stderr.splitlines() if "MLflow" in line and "warning" in line]
    assert len(warnings) == 1 and "ep-core sync" in warnings[0] and "Traceback" not in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 6
    link = json.loads((out / "mlflow.json").read_text())
    assert link["run_id"] and link["epochs_sent"] < 6 and link["status"] is None

    # While the server is still down, sync says so (exit 1) and keeps everything.
    os.environ["EP_CORE_MLFLOW_TIMEOUT"] = "5"
    try:
        assert main(["sync", str(out)]) == 1
        server.start()
        client = mlflow_client(server.uri)
        sent_before = len(client.get_metric_history(link["run_id"], "test_acc"))
        assert client.get_run(link["run_id"]).info.status == "RUNNING" and sent_before < 6
        assert main(["sync", str(out)]) == 0
    finally:
        del os.environ["EP_CORE_MLFLOW_TIMEOUT"]
    assert_level_with_run_dir(client, out, 6)
    assert main(["sync", str(out)]) == 0  # idempotent: nothing sent twice
    assert len(client.get_metric_history(link["run_id"], "test_acc")) == 6


class Flaky:
    """A real MlflowClient whose calls fail while `down` is set (a store that stops answering)."""

    def __init__(self, client):
        self.client, self.down, self.failures = client, False, 0

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                self.failures += 1
                raise ConnectionError("Connection refused")
            return attr(*args, **kwargs)

        return call


def test_the_job_itself_sends_what_an_outage_held_back_when_the_store_answers_again(
    tmp_path, monkeypatch, capsys
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flaky = Flaky(store.store_client(uri))
    monkeypatch.setitem(store._CLIENTS, uri, flaky)
    monkeypatch.setattr(mirror, "RETRY_AFTER_S", 0.0)
    tracker = mirror.RunTracker.for_uri(uri, "ep-core", "flaky")
    real_sync = tracker.sync

    def sync(params, rows, *args, **kwargs):
        flaky.down = len(rows) in (2, 3)  # MLflow unreachable after epochs 2 and 3
        return real_sync(params, rows, *args, **kwargs)

    tracker.sync = sync
    out = tmp_path / "run"
    assert train(build_config(TINY, ["train.epochs=5"]), out, tracker=tracker) == 0
    err = capsys.readouterr().err
    assert flaky.failures >= 2
    assert err.count("warning: MLflow") == 1 and err.count("MLflow mirror back") == 1
    assert_level_with_run_dir(flaky.client, out, 5)


def _first_writer(args: list[str]) -> int:
    return main(args)


def test_16_concurrent_first_writers_on_a_fresh_sqlite_store_all_land(tmp_path):
    db = tmp_path / "fresh" / "new.db"
    config = write_config(tmp_path / "one.yaml", epochs=1)
    jobs = [["train", "--config", str(config), "--out", str(tmp_path / f"run{i}"), "--threads", "1",
             "--set", f"train.seed={i}", "--set", "data.synthetic_train=16", "--mlflow", f"sqlite:///{db}"]
            for i in range(16)]  # fmt: skip
    # forkserver: children forked from a fresh process with torch and mlflow imported (fast, fork-safe)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ep_core.training.run", "ep_core.tracking.mirror", "mlflow.tracking"])
    with context.Pool(16) as pool:
        codes = pool.map(_first_writer, jobs, chunksize=1)
    assert codes == [0] * 16
    client = mlflow_client(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("ep-core").experiment_id])
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["train.seed"] for r in runs} == {str(i) for i in range(16)}


def test_a_kill_before_the_first_checkpoint_leaves_no_orphan_run(tmp_path):
    db = tmp_path / "mlflow.db"
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", epochs=2, checkpoint_every=2)
    args = [sys.executable, "-m", "ep_core.cli", "train", "--config", str(config), "--out", str(out),
            "--threads", "1", "--mlflow", f"sqlite:///{db}"]  # fmt: skip
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Killed after its MLflow run exists and epoch 1 is logged, before any checkpoint (every 2 epochs).
    while not (
        (out / "mlflow.json").exists() and json.loads((out / "mlflow.json").read_text())["epochs_sent"]
    ):
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.05)
    job.kill()
    job.wait()
    assert not (out / "checkpoint.pt").exists()
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    client = mlflow_client(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("ep-core").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, the same one: no orphan
    assert_level_with_run_dir(client, out, 2)
    assert json.loads((out / "metrics.json").read_text())["mlflow_run_id"] == run_id


def test_a_bad_tracking_uri_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml")
    assert main(["train", "--config", str(config), "--out", str(out), "--mlflow", "foo://bar"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mlflow: 'foo://bar' is not a tracking URI" in err
    assert not out.exists()
    # SQLAlchemy's dialect+driver form of a database URI is one
    assert store.check_uri("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    with pytest.raises(store.TrackingError, match="'foo\\+bar://h' is not a tracking URI"):
        store.check_uri("foo+bar://h")


def test_the_pipeline_parent_status_follows_the_snakemake_outcome(tmp_path):
    log = tmp_path / "snakemake.log"
    log.write_text("...\nTerminating processes on user request, this might take some time.\n")
    assert parent.pipeline_status(log, failed=True) == "KILLED"
    assert parent.pipeline_status([str(log)], failed=True) == "KILLED"  # what Snakemake's hooks get
    log.write_text("Error in rule train:\n")
    assert parent.pipeline_status(log, failed=True) == "FAILED"
    # the job got Ctrl-C's SIGINT and exited (128 + 2) before Snakemake handled its own
    log.write_text("CalledProcessError in file train.smk, line 38:\nCommand 'python3 train.py' returned non-zero "
                   "exit status 130.\nError in rule train:\n")  # fmt: skip
    assert parent.pipeline_status(log, failed=True) == "KILLED"
    log.write_text("Command 'python3 train.py' returned non-zero exit status 1300.\n")
    assert parent.pipeline_status(log, failed=True) == "FAILED"
    log.write_text("Command 'python3 train.py' returned non-zero exit status 1.\n")
    assert parent.pipeline_status(log, failed=True) == "FAILED"
    assert parent.pipeline_status(None, failed=False) == "FINISHED"
    init = parent.init_tracking(f"sqlite:///{tmp_path / 'm.db'}", "pipe", tmp_path / "art", "parent")
    path = tmp_path / "init.json"
    path.write_text(json.dumps(init))
    client = mlflow_client(init["tracking_uri"])
    for status in ("FAILED", "RUNNING", "KILLED", "FINISHED"):
        parent.mark_parent(path, status)
        assert client.get_run(init["parent_run_id"]).info.status == status
    parent.mark_parent(tmp_path / "missing.json", "FAILED")  # no init yet: nothing to mark, no error
