"""`ep-core train`, `sync`, `download` and `attach`: a run, its MLflow mirror, the data it reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import at_least


def _train(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.run import train

    for flag, value in (("--run-name", args.run_name), ("--mlflow-experiment", args.mlflow_experiment)):
        if value is not None and not args.mlflow:
            raise ValueError(f"{flag}: applies with --mlflow only")
    if args.mlflow_experiment is not None and args.mlflow and args.mlflow.endswith(".json"):
        raise ValueError(
            "--mlflow-experiment: the init.json names the experiment; give a tracking URI instead"
        )
    if args.tag and not args.mlflow:
        raise ValueError("--tag: applies with --mlflow only")
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag expects KEY=VALUE, got {item!r}")
        tags[key] = value
    config = load_config(args.config, args.set)
    tracker = None
    if args.mlflow:
        from pathlib import Path

        from ..tracking.mirror import RunTracker

        name = args.run_name or Path(args.out).resolve().name
        if args.mlflow.endswith(".json"):
            tracker = RunTracker.from_file(args.mlflow, name, tags=tags)
        else:  # the store and experiment are made at the first call that succeeds (sqlite: under a lock)
            tracker = RunTracker.for_uri(args.mlflow, args.mlflow_experiment or "ep-core", name, tags=tags)
    return train(config, args.out, tracker=tracker, threads=args.threads, diverged_ok=args.diverged_ok)


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one network (resumes if DIR holds a checkpoint); under torchrun or srun, data-parallel "
        "over their processes",
    )
    p.add_argument("--config", help="YAML run configuration (sections data, model, ep, optim, train)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (created; resumed if present)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set ep.beta=0.2",
    )
    p.add_argument(
        "--mlflow", metavar="URI|INIT.json",
        help="mirror the run to MLflow: a tracking URI (e.g. sqlite:///mlflow.db) or a pipeline's init.json",
    )  # fmt: skip
    p.add_argument("--mlflow-experiment", help="experiment name with a tracking URI (default ep-core)")
    p.add_argument("--run-name", help="MLflow run name (default: the --out directory's name)")
    p.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="an MLflow tag of the run (repeated)"
    )
    p.add_argument("--threads", type=at_least(1), help="torch CPU threads")
    p.add_argument(
        "--diverged-ok", action="store_true", help="exit 0 when the run diverges (it is recorded as diverged)"
    )
    p.set_defaults(func=_train)


def _sync(args: argparse.Namespace) -> int:
    from ..tracking.mirror import sync_run

    behind = 0
    for out in args.run_dirs:
        if sync_run(out):
            print(f"{out}: MLflow is up to date")
        else:
            behind += 1
    return 1 if behind else 0


def add_sync(sub) -> None:
    p = sub.add_parser(
        "sync", help="send what MLflow lacks of run directories (after an outage); exit 1 if still behind"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.set_defaults(func=_sync)


def _download(args: argparse.Namespace) -> int:
    from ..training.datasets import download

    where = download(args.dataset, args.data_dir, accept_present=args.accept_present)
    print(f"{args.dataset} is ready under {where}")
    return 0


def add_download(sub) -> None:
    p = sub.add_parser(
        "download", help="fetch a dataset once into a data directory (training never downloads)"
    )
    p.add_argument("--dataset", required=True, help="cifar10, cifar100 or fashion_mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument(
        "--accept-present",
        action="store_true",
        help="keep files already in --data-dir that are all there and readable, without md5 checks "
        "(a pre-provisioned copy on a host without network)",
    )
    p.set_defaults(func=_download)


def _attach(args: argparse.Namespace) -> int:
    import json

    from ..tracking.parent import log_files_to_parent

    init = Path(args.init)
    if not init.is_file():
        raise ValueError(f"--init: {str(init)!r} does not exist (the pipeline's mlflow_init writes it)")
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise ValueError(f"{missing[0]!r} does not exist")
    log_files_to_parent(json.loads(init.read_text()), [Path(f) for f in args.files], Path(args.root))
    print(f"logged {len(args.files)} file(s) to the pipeline's parent MLflow run")
    return 0


def add_attach(sub) -> None:
    p = sub.add_parser(
        "attach", help="log files (e.g. results/report.html) to the pipeline's parent MLflow run"
    )
    p.add_argument("files", nargs="+")
    p.add_argument("--init", default="results/mlflow/init.json", help="the pipeline's init.json")
    p.add_argument("--root", default="results", help="artifact paths are relative to this folder")
    p.set_defaults(func=_attach)
