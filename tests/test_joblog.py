"""The training job's log survives Snakemake's deleting it before each attempt (ep_core.pipeline.joblog);
the pipeline test of a killed job checks the same through Snakemake."""

import os
from pathlib import Path

from ep_core.pipeline import joblog


def attempt(job_log: Path, run_dir: Path, text: str) -> None:
    """One job attempt as Snakemake runs it: its log path deleted first, then the job writing."""
    job_log.unlink(missing_ok=True)
    with joblog.open_job_log(job_log, run_dir) as stream:
        stream.write(text)


def test_every_attempt_is_in_both_logs_though_snakemake_deletes_its_path_each_time(tmp_path):
    job_log, run_dir = tmp_path / "logs/train/r.log", tmp_path / "results/runs/r"
    for text in ("slice 1\n", "slice 2\n", "slice 3\n"):
        attempt(job_log, run_dir, text)
    assert job_log.read_text() == (run_dir / joblog.RUN_LOG).read_text() == "slice 1\nslice 2\nslice 3\n"
    assert job_log.samefile(run_dir / joblog.RUN_LOG) and not job_log.is_symlink()  # a hard link


def test_a_log_written_before_the_link_existed_is_kept_first(tmp_path):
    job_log, run_dir = tmp_path / "r.log", tmp_path / "run"
    job_log.write_text("an earlier attempt\n")
    with joblog.open_job_log(job_log, run_dir) as stream:
        stream.write("this one\n")
    assert job_log.read_text() == "an earlier attempt\nthis one\n"


def test_without_hard_links_snakemakes_path_is_a_relative_symbolic_link(tmp_path, monkeypatch):
    def no_link(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    job_log, run_dir = tmp_path / "logs/r.log", tmp_path / "results/r"
    for text in ("a\n", "b\n"):
        attempt(job_log, run_dir, text)
    assert job_log.is_symlink() and os.readlink(job_log) == "../results/r/train.log"
    assert job_log.read_text() == "a\nb\n"


def test_a_run_directory_that_cannot_be_made_leaves_snakemakes_log_alone(tmp_path):
    (tmp_path / "a-file").write_text("")
    with joblog.open_job_log(tmp_path / "r.log", tmp_path / "a-file/run") as stream:
        stream.write("the run's own error follows\n")
    assert (tmp_path / "r.log").read_text() == "the run's own error follows\n" and not (
        tmp_path / "r.log"
    ).is_symlink()
