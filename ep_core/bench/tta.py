"""`ep-core bench-tta`: time to accuracy of training recipes, by a protocol stated before it runs.

Per dataset (digits and mnist5k by default; docs/benchmarks.md, "Time to accuracy: the protocol"):

1. **Warm-up.** One short run of the reference recipe (a few batches), discarded, before the first timed run
   (of this process: a resumed protocol warms up again).
2. **Select the learning rate** (only with `--select-lr`). Every recipe at every candidate rate on the
   selection seeds (100, 101), with the validation split below; the rate at which every one of these
   networks lived (no dead hidden layer) with the highest mean validation accuracy over all of them trains
   every later run (ep_core.bench.tta_stats.choose_lr). A dead network rules its rate out: it stops at that
   epoch, and the rate's other selection runs are skipped. None lived: the protocol stops, naming them.
3. **Select** (only with `--select`). Candidate sweep settings and the reference are trained on selection
   seeds (100, 101) with a stratified validation split held out of the training set (`data.val_size`,
   `data.split_seed` 0); the cheapest candidate in mean training seconds whose mean final validation accuracy
   (authors' evaluation) is within `tolerance` points of the reference's is reported next to the recipes.
   Without it the recipes' lengths were fixed before the run (`fast`'s on seed 0's test accuracy), so the
   reported seeds must exclude 0.
4. **Main.** Every recipe on every reported seed (at least 5 by default), seed by seed, the order rotated
   from seed to seed so that each recipe goes first equally often. Every run uses the authors' evaluation
   sweeps (ep.eval_iterations, which only evaluation reads) and its final network is tested with the
   authors' relaxation and with its own (ep_core.bench.tta_runs).
5. **Equal-compute control.** The reference again on every seed, with the whole epochs that fit in the
   control recipe's mean training time (cosine schedule over those epochs): `authors@fast-time`.

The result is `<out>/<dataset>.json` (written after every run, with `complete: false` until the end;
rerunning the same command skips the runs it holds), a markdown table and a figure beside it
(ep_core.bench.tta_report).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..training.config import RunConfig, build_config
from ..training.datasets import load_data
from ..training.recipes import RECIPES
from .tta_report import load_partial, write_json
from .tta_runs import StoppedError, backfill_relaxation, run_one
from .tta_stats import TARGET_MARGIN, TARGET_SPEEDUP, rotated_order
from .tta_summary import control_epochs, lived, lr_selection, selection, summarise, summary_line, versus

DATASETS = ("digits", "mnist5k")  # the datasets `bench-tta` runs when none is named
DEFAULT_RECIPES = ("authors", "fast")
DEFAULT_SEEDS = (1, 2, 3, 4, 5)  # seed 0 chose fast's lengths: never reported
SELECTION_SEEDS = (100, 101)
# Candidate sweep settings of `--select` (free / each nudged phase; evaluation at the free count).
CANDIDATES = tuple(
    f"fast:ep.free_iterations={f},ep.nudge_iterations={n},ep.eval_iterations={f}"
    for f, n in ((20, 8), (30, 11), (40, 15), (60, 25))
)
WARMUP_BATCHES = 5


@dataclass
class Settings:
    """Everything that decides which runs a protocol trains (a resumed result must have the same)."""

    dataset: str = "digits"
    recipes: dict[str, list[str]] = field(default_factory=lambda: dict(map(parse_recipe, DEFAULT_RECIPES)))
    reference: str = "authors"
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    epochs: int = 3
    width: float = 0.0625
    batch_size: int = 32
    lr: float = 0.05
    # At most this many batches per epoch (train.max_batches; None: whole epochs): 63 × 32 = 2,016 random
    # examples, so mnist5k's epochs (4,000) are halved to fit the time budget and digits' (1,437) are whole.
    max_batches: int | None = 63
    extra: list[str] = field(default_factory=list)
    control: str | None = "fast"  # the recipe whose mean training time the reference is given
    warmup: bool = True
    select: bool = False
    candidates: dict[str, list[str]] = field(default_factory=lambda: dict(map(parse_recipe, CANDIDATES)))
    selection_seeds: tuple[int, ...] = SELECTION_SEEDS
    val_size: int | None = None  # --select: held-out examples (None: a fifth of the training set)
    tolerance: float = 1.0  # --select: accuracy points below the reference a candidate may be
    lrs: tuple[float, ...] = ()  # --select-lr: candidate learning rates (empty: `lr` without selection)


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """'fast:ep.tol=1e-4,ep.order=coloring' -> ('fast:ep.tol=1e-4,...', ['ep.recipe=fast', ...]); the names
    are those of ep_core.training.recipes.RECIPES."""
    name, _, keys = text.partition(":")
    if name not in RECIPES:
        raise ValueError(f"--recipe {text!r}: unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    return text, [f"ep.recipe={name}", *(k for k in keys.split(",") if k)]


def base(s: Settings) -> dict[str, Any]:
    """The shared setting: the authors' hyper-parameters (resolved from the defaults) on Hopfield-ResNet13 at
    `width`, with the digits demo's batch and learning rate, on the CPU."""
    return {
        "data": {"name": s.dataset},
        "model": {"arch": "hopfield_resnet13", "width": s.width},
        "optim": {"lr": s.lr},
        "train": {"epochs": s.epochs, "batch_size": s.batch_size, "max_batches": s.max_batches,
                  "device": "cpu", "checkpoint_every": 1000},
    }  # fmt: skip


def _configs(s: Settings, overrides: list[str], more: list[str]) -> tuple[RunConfig, RunConfig]:
    """(the config a run trains with: the authors' evaluation sweeps; the recipe's own) for `overrides`."""
    authors_eval = build_config(base(s), [*s.extra, "ep.recipe=authors"]).ep.eval_iterations
    own = build_config(base(s), [*s.extra, *overrides, *more])
    return build_config(base(s), [*s.extra, *overrides, *more, f"ep.eval_iterations={authors_eval}"]), own


def check(s: Settings) -> None:
    """Every bad setting, before anything is trained: one line naming what is allowed."""
    if s.reference not in s.recipes:
        raise ValueError(f"--reference {s.reference!r} is not among the recipes: {', '.join(s.recipes)}")
    others = [n for n in s.recipes if n != s.reference] + (["selected"] if s.select else [])
    if s.control is not None and s.control not in others:
        raise ValueError(f"--control {s.control!r}: valid choices: {', '.join(others) or 'none'} (or none)")
    if len(s.seeds) < 2 or len(set(s.seeds)) != len(s.seeds):
        raise ValueError(
            f"--seeds: need at least 2 distinct seeds for a paired interval, got {list(s.seeds)}"
        )
    if 0 in s.seeds:
        raise ValueError("--seeds: seed 0 chose fast's sweep lengths (its test accuracy); report other seeds")
    if any(k.partition("=")[0].strip() == "optim.lr" for k in s.extra):
        raise ValueError(
            "--set optim.lr: the learning rate is --lr (or --select-lr's choice), not a --set key"
        )
    if s.lrs and (min(s.lrs) <= 0 or len(set(s.lrs)) != len(s.lrs)):
        raise ValueError(f"--select-lr: need distinct learning rates > 0, got {list(s.lrs)}")
    if (s.select or s.lrs) and set(s.selection_seeds) & set(s.seeds):
        raise ValueError(
            f"--selection-seeds {list(s.selection_seeds)} must not overlap --seeds {list(s.seeds)}"
        )
    for overrides in [*s.recipes.values(), *(s.candidates.values() if s.select else [])]:
        _configs(s, overrides, [])


class Protocol:
    """One dataset's protocol: its runs (resumed from `path` when it holds a partial result of the same
    settings) and the JSON written after every run."""

    def __init__(self, s: Settings, path: Path, workdir: Path, threads: int | None, fresh: bool = False):
        check(s)
        self.s, self.path, self.workdir, self.threads = s, path, workdir, threads
        self.setting = _jsonable(s) | {"base": base(s)}
        # A resumed protocol's time is the earlier attempts' plus this one's; its load average before is
        # the first attempt's; after and the warm-up's time, those of the last one that trained a run. An
        # attempt that trains none (the same command again on a finished result, to rewrite its table with
        # this code) measures nothing.
        self.runs, self.spent, self.earlier = ([], 0.0, {}) if fresh else load_partial(path, self.setting)
        self.trained = False
        for r in self.runs:
            backfill_relaxation(r, self.run_dir(r["recipe"], r["seed"], r["phase"], r.get("lr", s.lr)))
        self.started = time.perf_counter()
        self.lr = s.lr  # every run's learning rate, until `select_lr` chooses one
        authors = build_config(base(s), [*s.extra, "ep.recipe=authors"]).ep.eval_iterations
        self.extra: dict[str, Any] = {
            "authors_eval_iterations": authors,
            "load_average_before": self.earlier.get("load_average_before", list(os.getloadavg())),
        }

    def _done(self, name: str, seed: int, phase: str, lr: float) -> bool:
        key = (name, seed, phase, lr)
        return any((r["recipe"], r["seed"], r["phase"], r.get("lr", self.s.lr)) == key for r in self.runs)

    def train(
        self,
        name: str,
        overrides: list[str],
        seed: int,
        phase: str,
        more: list[str] = (),
        lr: float | None = None,
    ) -> None:
        lr = self.lr if lr is None else lr
        if self._done(name, seed, phase, lr):
            return
        if self.s.warmup and "warmup_seconds" not in self.extra:
            self.warm_up()  # before the first run this process trains (none when resuming a finished one)
        config, own = _configs(self.s, overrides, [*more, f"optim.lr={lr}", f"train.seed={seed}"])
        authors = build_config(base(self.s), [*self.s.extra, "ep.recipe=authors"])
        out = self.run_dir(name, seed, phase, lr)
        self.runs.append(run_one(name, config, own, authors, seed, out, self.threads, phase) | {"lr": lr})
        self.trained = True
        self.write(complete=False)

    def run_dir(self, name: str, seed: int, phase: str, lr: float) -> Path:
        """The folder a run trains in."""
        rate = f"lr{lr:g}" if phase == "select-lr" else ""  # the select-lr step trains a seed at every rate
        return self.workdir / phase / rate / f"{_slug(name)}-seed{seed}"

    def warm_up(self) -> None:
        """One short reference run, discarded: the first run of a process pays for imports and allocation."""
        config, _ = _configs(self.s, self.s.recipes[self.s.reference], [f"train.max_batches={WARMUP_BATCHES}",
                                                                        "train.epochs=1"])  # fmt: skip
        from ..training.run import train

        out = self.workdir / "warmup"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        if (status := train(config, out, threads=self.threads)) >= 128:
            raise StoppedError(f"{out}: the warm-up was stopped by signal {status - 128}", status)
        self.extra["warmup_seconds"] = time.perf_counter() - t0

    def select_lr(self) -> None:
        s = self.s
        # A dead network rules its rate out: it stops at that epoch, and the rate's other runs are skipped.
        more = [*self.validation(), "train.stop_on_dead_layer=true"]
        order = [
            (seed, name)
            for i, seed in enumerate(s.selection_seeds)
            for name in rotated_order(list(s.recipes), i)
        ]
        for lr in s.lrs:
            for seed, name in order:
                if not self._rate_alive(lr):
                    break
                self.train(name, s.recipes[name], seed, "select-lr", more, lr=lr)
        self.extra["lr_selection"] = lr_selection(self.runs, list(s.lrs))
        chosen = self.extra["lr_selection"]["chosen"]
        if chosen is None:
            self.write(complete=False)
            died = "; ".join(
                f"lr {c['lr']:g}: {', '.join(c['died'])}" for c in self.extra["lr_selection"]["candidates"]
            )
            raise ValueError(
                f"--select-lr: a selection network died at every candidate rate ({died}); try smaller ones"
            )
        self.lr = chosen

    def _rate_alive(self, lr: float) -> bool:
        """No `select-lr` network at `lr` has died (or failed) so far."""
        return all(lived(r) for r in self.runs if r["phase"] == "select-lr" and r.get("lr") == lr)

    def select(self) -> None:
        s = self.s
        val = self.validation()
        names = [s.reference, *s.candidates]
        specs = {s.reference: s.recipes[s.reference], **s.candidates}
        for i, seed in enumerate(s.selection_seeds):
            for name in rotated_order(names, i):
                self.train(name, specs[name], seed, "select", val)
        self.extra["selection"] = selection(self.runs, s.reference, list(s.candidates), s.tolerance)
        chosen = self.extra["selection"]["chosen"]
        if chosen is not None and chosen not in s.recipes:
            s.recipes[chosen] = s.candidates[chosen]

    def validation(self) -> list[str]:
        """The keys of the selection steps' validation split (held out of the training set)."""
        return ["data.split_seed=0", f"data.val_size={self.val_size()}"]

    def val_size(self) -> int:
        """--val-size, or a fifth of the training set."""
        if self.s.val_size is not None:
            return self.s.val_size
        d = build_config(base(self.s), self.s.extra).data
        if d.name == "synthetic":
            return round(0.2 * d.synthetic_train)
        return round(0.2 * load_data(d.name, data_dir=d.data_dir, augment=False).num_train)

    def main(self) -> None:
        for i, seed in enumerate(self.s.seeds):
            for name in rotated_order(list(self.s.recipes), i):
                self.train(name, self.s.recipes[name], seed, "main")

    def control(self) -> None:
        s = self.s
        of = self.extra.get("selection", {}).get("chosen") if s.control == "selected" else s.control
        if of is None:
            return
        info = control_epochs(self.runs, s.reference, of)
        self.extra["control"] = info
        if info is None:
            return
        for seed in s.seeds:
            self.train(
                info["name"], s.recipes[s.reference], seed, "control", [f"train.epochs={info['epochs']}"]
            )

    def result(self, complete: bool) -> dict[str, Any]:
        s = self.s
        names = [*s.recipes, *([self.extra["control"]["name"]] if self.extra.get("control") else [])]
        main = [r for r in self.runs if r["phase"] in ("main", "control")]
        recipes = summarise(main, names, s.reference, judged=list(s.recipes))
        control = self.extra.get("control")
        return {
            "protocol": "ep-core bench-tta: time to accuracy (docs/benchmarks.md)", "dataset": s.dataset,
            "complete": complete, "setting": self.setting, "reference": s.reference,
            "targets": {"speedup_training_at_least": TARGET_SPEEDUP, "ci95_inside_points": TARGET_MARGIN},
            "recipes": recipes,
            "control_comparison": versus(main, control["of"], control["name"]) if control else None,
            "summary": summary_line(s.dataset, recipes, s.reference),
            **self.extra, "load_average_after": list(os.getloadavg()), **self._kept(),
            "cpu_count": os.cpu_count(),
            "torch_threads": self.threads or torch.get_num_threads(),
            "elapsed_seconds": self.spent + (time.perf_counter() - self.started if self.trained else 0.0),
            "runs": self.runs,
        }  # fmt: skip

    def _kept(self) -> dict[str, Any]:
        """The earlier attempt's measurements that stand when this one trained no run."""
        return {} if self.trained else {k: v for k, v in self.earlier.items() if k != "load_average_before"}

    def write(self, complete: bool) -> dict[str, Any]:
        result = self.result(complete)
        write_json(result, self.path)
        return result


def run_protocol(s: Settings, path: str | Path, workdir: str | Path, threads: int | None = None,
                 fresh: bool = False) -> dict[str, Any]:  # fmt: skip
    """The whole protocol for one dataset (see the module docstring); returns the result it wrote."""
    p = Protocol(s, Path(path), Path(workdir), threads, fresh)
    if s.lrs:
        p.select_lr()
    if s.select:
        p.select()
    p.main()
    p.control()
    return p.write(complete=True)


def _slug(name: str) -> str:
    """A folder name for a recipe's runs (a long one shortened, with a hash of the whole)."""
    slug = "".join(c if c.isalnum() or c in "-_@." else "_" for c in name)
    if len(slug) <= 60:
        return slug
    return f"{slug[:50]}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


def _jsonable(s: Settings) -> dict[str, Any]:
    d = asdict(s)
    d["seeds"], d["selection_seeds"], d["lrs"] = list(s.seeds), list(s.selection_seeds), list(s.lrs)
    if not s.select:
        d.pop("candidates"), d.pop("tolerance")
    if not (s.select or s.lrs):
        d.pop("selection_seeds"), d.pop("val_size")
    if not s.lrs:
        d.pop("lrs")  # the settings of a result from before --select-lr existed
    return d
