"""MLflow on PostgreSQL: a real `mlflow server --backend-store-uri postgresql://…` (two workers, the bounded
connection pool the README recommends) in front of a private PostgreSQL cluster that the tests start
themselves (initdb in a temporary directory, a free port on 127.0.0.1). 16 concurrent first writers land,
a restart of the database or of the server in the middle of a run loses nothing, a pipeline grid's parent
and child runs land through the server, and `.ci/start-postgres.sh` works. Skipped, saying why, where
PostgreSQL cannot start (Debian: `apt-get install postgresql`; `.ci/start-postgres.sh` installs it)."""

import contextlib
import glob
import json
import multiprocessing
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_pipeline import OWN_GRID, _assert_complete, load, snakemake
from test_pipeline import TINY as TINY_GRID
from test_tracking import BIN, Server, _first_writer, assert_level_with_run_dir, free_port, mlflow_client
from test_tracking import write_config as write_run_config

from ep_core.cli import main
from ep_core.pipeline import grid
from ep_core.tracking.store import TIMEOUT_ENV
from ep_core.training.rundir import LINK, read_history

ROOT = Path(__file__).resolve().parents[1]
# The README's pool setting for a server with several workers. Each worker has its own pools (one
# SQLAlchemy engine for runs, one for the model registry), each of at most POOL_SIZE + MAX_OVERFLOW
# connections; a request can hold one connection while it waits for a second, so a pool smaller than the
# requests a worker serves at once stalls them for SQLAlchemy's 30 s and fails them (measured: 16
# concurrent clients on 2 workers fail with 2 + 2, land with 5 + 5).
WORKERS = 2
POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "5"}
# The README's bound: workers x 2 engines x (5 + 5), + the few the server's launcher keeps from its checks.
MAX_CONNECTIONS = WORKERS * 2 * 10 + 3
DOWN = "warning: MLflow mirror down"


class PostgresError(RuntimeError):
    """A PostgreSQL tool failed (its message, shortened)."""


def pg_bindir() -> Path | None:
    """initdb's and pg_ctl's directory: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin (newest)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d, "initdb").exists()]
    return max(dirs, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


def _postgres_user() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


class Postgres:
    """A private PostgreSQL cluster in `root`: TCP on 127.0.0.1:`port` only, trust authentication (nobody
    else reaches it; it lives as long as this module). As root its tools run as the `postgres` user:
    initdb and postgres refuse to run as root."""

    def __init__(self, bindir: Path, root: Path, port: int):
        self.bindir, self.root, self.port = bindir, root, port
        self.data, self.log = root / "data", root / "postgres.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, tool: str, *args: str, timeout: float = 180) -> None:
        command = [*self.as_user, str(self.bindir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise PostgresError(f"{tool}: {' '.join(message[-3:])[:500]}")

    def init(self) -> None:
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")  # fmt: skip

    def start(self) -> None:
        # fsync off: a throwaway cluster on a loaded machine; a fast shutdown still writes everything.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "120", "start"
        )

    def stop(self) -> None:
        """A fast shutdown: open connections (the MLflow server's pool) are cut, as a real restart does."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")

    def create_database(self) -> str:
        name = f"mlflow_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def query(uri: str, sql: str, *params: object) -> list[tuple]:
    """Rows straight from PostgreSQL (not through MLflow): what the server really stored."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(uri)) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries not found (Debian: apt-get install postgresql; .ci/start-postgres.sh)"
        )
    if os.geteuid() == 0 and not _postgres_user():
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="ep-core-pg-"))  # not under pytest's 0700 root-only tmp dirs
    cluster = Postgres(bindir, root, free_port())
    try:
        try:
            cluster.init()
            cluster.start()
        except (PostgresError, OSError) as error:  # OSError: no runuser, a data directory it cannot make
            pytest.skip(f"PostgreSQL could not be started here: {error}")
        yield cluster
    finally:
        with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_ci_script_starts_a_cluster_idempotently_and_its_uri_logs_in_with_the_password(postgres):
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="ep-core-pg-script-"))
    port = free_port()
    env = {**os.environ, "EP_CORE_PG_DIR": str(root), "EP_CORE_PG_PORT": str(port)}
    try:
        first, again = (
            subprocess.run(["bash", str(ROOT / ".ci/start-postgres.sh")], capture_output=True, text=True,
                           env=env, timeout=300)
            for _ in range(2)
        )  # fmt: skip
        assert first.returncode == 0 == again.returncode, first.stderr + again.stderr
        uri = (root / "uri").read_text().strip()
        assert uri == f"postgresql://mlflow:mlflow@127.0.0.1:{port}/mlflow"
        assert f"backend store: {uri}" in first.stdout and again.stdout == first.stdout  # the same cluster
        assert query(uri, "SELECT current_user, current_database()") == [("mlflow", "mlflow")]
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            query(uri.replace(":mlflow@", ":wrong@"), "SELECT 1")
    finally:
        with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
            Postgres(postgres.bindir, root, port).stop()
        shutil.rmtree(root, ignore_errors=True)


class PgServer(Server):
    """test_tracking's `mlflow server` (own process group, /health polled), on a fresh PostgreSQL database
    with WORKERS workers and the POOL setting; its log in ROOT/server.log."""

    def __init__(self, root: Path, port: int, backend: str):
        super().__init__(root, port)
        self.backend = backend

    def start(self, wait: float = 180) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **POOL}
        with open(self.root / "server.log", "a") as log:
            self.process = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", str(WORKERS)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "server.log").read_text()[-3000:]
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.uri}/health", timeout=5) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"mlflow server did not answer in {wait} s")


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[PgServer]:
    """One server for the module (its start costs 5-15 s); each test writes its own experiment."""
    server = PgServer(tmp_path_factory.mktemp("mlflow-server"), free_port(), postgres.create_database())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_server(mlflow_server) -> PgServer:
    """The module's server, started again if an earlier test left it down."""
    if mlflow_server.process is None or mlflow_server.process.poll() is not None:
        mlflow_server.stop()
        mlflow_server.start()
    return mlflow_server


def connections(uri: str) -> int:
    """Connections to `uri`'s database now (the server's pools), this query's own not counted."""
    rows = query(uri, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")  # fmt: skip
    return int(rows[0][0])


class Peak:
    """The most connections seen while the block runs, sampled every 0.2 s in a thread."""

    def __init__(self, uri: str):
        self.uri, self.value, self._stop = uri, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.value = max(self.value, connections(self.uri))

    def __enter__(self) -> "Peak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _writer_with_its_stderr(job: tuple[list[str], str]) -> int:
    """`ep-core` args in this pool process, everything it writes to stderr (the mirror's warnings) into
    the file named."""
    args, log = job
    with open(log, "w") as stream:
        os.dup2(stream.fileno(), 2)
        code = main(args)
        sys.stderr.flush()
    return code


def test_16_concurrent_first_writers_straight_to_a_fresh_postgresql_database_all_land(tmp_path, postgres):
    # No server and no pipeline to create the tables first: each process creates MLflow's store itself
    # (ep_core.tracking.store takes an advisory lock for it; without it, they fail each other's).
    uri = postgres.create_database()
    config = write_run_config(tmp_path / "one.yaml", epochs=1)
    logs = [tmp_path / f"stderr{i}.log" for i in range(16)]
    jobs = [(["train", "--config", str(config), "--out", str(tmp_path / f"run{i}"), "--threads", "1", "--set",
              f"train.seed={i}", "--set", "data.synthetic_train=16", "--mlflow", uri], str(log))
            for i, log in enumerate(logs)]  # fmt: skip
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ep_core.training.run", "ep_core.tracking.mirror", "mlflow.tracking"])
    with context.Pool(16) as pool:
        codes = pool.map(_writer_with_its_stderr, jobs, chunksize=1)
    assert codes == [0] * 16
    down = [log.read_text() for log in logs if DOWN in log.read_text()]
    assert not down, f"{len(down)} of 16 lost the store: {down[0][-2000:]}"
    client = mlflow_client(uri)
    runs = client.search_runs([client.get_experiment_by_name("ep-core").experiment_id])
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    assert len(query(uri, "SELECT version_num FROM alembic_version")) == 1  # migrated once, to one head


def test_16_concurrent_runs_land_through_a_postgresql_server_within_its_connection_pool(tmp_path, pg_server):
    config = write_run_config(tmp_path / "one.yaml", epochs=2)
    outs = [tmp_path / f"run{i}" for i in range(16)]
    jobs = [["train", "--config", str(config), "--out", str(out), "--threads", "1", "--set", f"train.seed={i}",
             "--set", "data.synthetic_train=16", "--mlflow", pg_server.uri, "--mlflow-experiment", "sixteen"]
            for i, out in enumerate(outs)]  # fmt: skip
    # As test_tracking's 16 first writers: forkserver children with torch and mlflow already imported.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ep_core.training.run", "ep_core.tracking.mirror", "mlflow.tracking"])
    with Peak(pg_server.backend) as peak, context.Pool(16) as pool:
        codes = pool.map(_first_writer, jobs, chunksize=1)
    assert codes == [0] * 16
    client = mlflow_client(pg_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("sixteen").experiment_id])
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["train.seed"] for r in runs} == {str(i) for i in range(16)}
    for out in outs:
        assert_level_with_run_dir(client, out, 2)  # every epoch's metrics, the summary, the files
    # In PostgreSQL itself: 16 finished runs, each with exactly its 2 epochs of test_acc (none twice).
    rows = query(pg_server.backend, "SELECT r.status, count(m.step) FROM runs r JOIN experiments e ON "
                 "e.experiment_id = r.experiment_id AND e.name = 'sixteen' JOIN metrics m ON "
                 "m.run_uuid = r.run_uuid AND m.key = 'test_acc' GROUP BY r.run_uuid, r.status")  # fmt: skip
    assert sorted(rows) == [("FINISHED", 2)] * 16
    # The pool bound held: 16 writers, never more connections than the README's formula allows.
    assert 0 < peak.value <= MAX_CONNECTIONS, peak.value
    print(
        f"16 runs: {len(runs)} FINISHED, 2 epochs each; peak {peak.value} connections (bound {MAX_CONNECTIONS})"
    )


class Train:
    """`ep-core train` against `uri` in a subprocess; a thread gathers its stderr (the mirror's lines)."""

    def __init__(self, config: Path, out: Path, uri: str, experiment: str):
        self.out = out
        # Generous per-call deadline for a loaded machine: an outage still fails at once (connection
        # refused, or the server's error while PostgreSQL is down), it is not waited out.
        env = {**os.environ, TIMEOUT_ENV: "60", "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ep_core.cli", "train", "--config", str(config), "--out", str(out),
             "--mlflow", uri, "--mlflow-experiment", experiment, "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def stderr(self) -> str:
        return "".join(self.lines)

    def running(self) -> bool:
        return self.process.poll() is None

    def link(self) -> dict:
        path = self.out / LINK
        return json.loads(path.read_text()) if path.exists() else {}

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.running():
                self.reader.join(30)
                assert condition(), f"the run ended before {what}: {self.stderr()[-2000:]}"
                return
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self.stderr()[-2000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> str:
        self.process.wait(timeout=timeout)
        self.reader.join(30)
        self.process.stderr.close()
        return self.stderr()

    def kill(self) -> None:
        if self.running():
            self.process.kill()
        self.finish(timeout=30)


@pytest.fixture
def tiny_run(tmp_path, request) -> Iterator[Callable[[str, int], Train]]:
    """Starts test_tracking's tiny synthetic run (4 batches an epoch) for `epochs`, in an experiment named
    after the test; killed at teardown."""
    started: list[Train] = []

    def start(uri: str, epochs: int) -> Train:
        config = write_run_config(tmp_path / "run.yaml", epochs=epochs)
        job = Train(config, tmp_path / "run", uri, request.node.name)
        started.append(job)
        return job

    yield start
    for job in started:
        job.kill()


def _assert_every_epoch_once(client, out: Path, epochs: int) -> str:
    """MLflow equals the run directory (test_tracking's check) and holds each epoch once; the run id."""
    assert_level_with_run_dir(client, out, epochs)
    run_id = json.loads((out / LINK).read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "test_acc")] == list(range(1, epochs + 1))
    return run_id


def test_a_postgresql_restart_mid_run_loses_nothing_and_the_job_itself_catches_up(
    postgres, pg_server, tiny_run
):
    epochs = 10
    job = tiny_run(pg_server.uri, epochs)
    job.wait_for("epoch 2 in MLflow", lambda: job.link().get("epochs_sent", 0) >= 2)
    sent_before = job.link()["epochs_sent"]
    assert job.running()
    postgres.stop()  # cuts the server's pooled connections
    try:
        job.wait_for("the mirror's warning", lambda: DOWN in job.stderr())  # an epoch met the outage
    finally:
        postgres.start()
    restarted_mid_run, done_at_restart = job.running(), len(read_history(job.out))
    stderr = job.finish()
    assert restarted_mid_run, "the run ended before PostgreSQL was back"
    assert job.process.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.count(DOWN) == 1 and "MLflow mirror back" in stderr  # one warning, then caught up
    # The job's own last sync sent what the outage held back: no `ep-core sync` needed.
    link = job.link()
    assert link["status"] == "FINISHED" and link["epochs_sent"] == epochs
    client = mlflow_client(pg_server.uri)
    run_id = _assert_every_epoch_once(client, job.out, epochs)
    assert main(["sync", str(job.out)]) == 0  # level already: nothing sent twice
    assert len(client.get_metric_history(run_id, "test_acc")) == epochs
    steps = query(pg_server.backend, "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'test_acc' "
                  "ORDER BY step", run_id)  # fmt: skip
    assert [s for (s,) in steps] == list(range(1, epochs + 1))
    print(f"PostgreSQL restart: {sent_before} epochs in MLflow when it stopped, back at epoch "
          f"{done_at_restart}, {epochs}/{epochs} in MLflow when the run ended")  # fmt: skip


def test_an_mlflow_server_restart_mid_run_loses_nothing(pg_server, tiny_run):
    epochs = 10
    job = tiny_run(pg_server.uri, epochs)
    job.wait_for("epoch 2 in MLflow", lambda: job.link().get("epochs_sent", 0) >= 2)
    sent_before, run_id = job.link()["epochs_sent"], job.link()["run_id"]
    assert job.running()
    pg_server.stop()  # SIGKILL to the server and its workers
    job.wait_for("the mirror's warning", lambda: DOWN in job.stderr())
    pg_server.start()  # same port, same database
    client = mlflow_client(pg_server.uri)
    # What the first server wrote is in PostgreSQL: the new server has it.
    held_after_restart = len(client.get_metric_history(run_id, "test_acc"))
    assert held_after_restart >= sent_before
    stderr = job.finish()
    assert job.process.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    metrics = json.loads((job.out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == epochs
    # The job catches up at its end if the server is back by then (timing); `ep-core sync` does otherwise.
    by_job = job.link()["epochs_sent"]
    assert main(["sync", str(job.out)]) == 0
    _assert_every_epoch_once(client, job.out, epochs)
    print(f"server restart: {sent_before} epochs before it, {held_after_restart} on the new server, "
          f"{by_job} sent by the job, {epochs}/{epochs} after ep-core sync")  # fmt: skip


# The smallest grid test_pipeline runs end to end (tiny.yaml + own_grid.yaml: a few training runs, the main
# table, the depth study and convergence as the parent's artifacts): the whole tiny grid took 2-5.5 min
# here on a loaded 2-core machine, this one about a quarter of that.
GRID = (TINY_GRID, OWN_GRID)


@pytest.mark.slow
def test_a_pipeline_grid_lands_its_parent_and_child_runs_through_the_postgresql_server(
    tmp_path, pg_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_server.uri)  # config.yaml's mlflow.tracking_uri: null
    workdir = tmp_path / "grid"
    result = snakemake("--cores", "2", "--directory", str(workdir), "--configfile", *map(str, GRID))
    assert result.returncode == 0, result.stderr[-3000:]
    init = json.loads((workdir / "results/mlflow/init.json").read_text())
    assert init["tracking_uri"] == pg_server.uri
    # test_pipeline's check: every child FINISHED with every epoch and equal to its run directory, the
    # parent FINISHED with the counts, the summary and exactly the grid's tables and figures as artifacts.
    _assert_complete(workdir, *GRID)
    children = len(list((workdir / "results/runs").rglob("metrics.json")))
    rows = query(pg_server.backend, "SELECT status, count(*) FROM runs WHERE experiment_id = %s "
                 "GROUP BY status", int(init["experiment_id"]))  # fmt: skip
    planned = len(grid.all_runs(load(*(str(f.relative_to(ROOT)) for f in GRID))))
    assert children == planned and rows == [("FINISHED", children + 1)]  # in PostgreSQL: children, parent
