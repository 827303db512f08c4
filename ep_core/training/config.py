"""One typed run configuration: YAML or dict -> validated dataclasses -> resolved defaults -> the library.

Every key is a dotted name (`ep.beta`, `optim.lr`), the same name used by `--set key=value`, in the
saved `config.yaml` of a run and in the pipeline's tables. Fields left at `None` ("auto") are filled by
`resolve` with the authors' value for that dataset and model (authors-code-spec §8), so the saved config
always states the numbers a run used. Any unknown key or bad value is a `ConfigError` (a ValueError) whose
one-line message names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..numerics.activations import ACTIVATIONS, AUTHORS_ALPHA_RANGE
from ..numerics.backprop import BP_NETWORKS
from ..numerics.estimators import EquilibriumProp, SettingError
from ..numerics.networks import NETWORKS
from .datasets import DATASETS
from .datasets import PRESETS as DATA_PRESETS
from .recipes import RECIPES, apply_recipe

EP_ARCHS = tuple(NETWORKS)
# What `train.fidelity_every: null` resolves to when the monitor is on: on digits at 1/16 width (CPU) a
# probe cost about 9 steps of `ep.recipe: fast` at batch 32, and every 200 steps the probes took 2.3 % of a
# 10-epoch run's training time (docs/benchmarks.md, "The gradient-fidelity monitor").
FIDELITY_EVERY = 200
BP_ARCHS = BP_NETWORKS
PRESETS = ("auto", *DATA_PRESETS)  # auto: the authors' recipe for the model
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULERS = ("cosine", "none")


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key and the allowed values."""


def choices(*values: str) -> dict:
    return {"choices": values}


@dataclass
class DataConfig:
    name: str = field(default="cifar10", metadata=choices(*DATASETS))
    data_dir: str = "data"
    preset: str = field(default="auto", metadata=choices(*PRESETS))  # auto: the authors' recipe for the model
    augment: bool = True
    val_size: int = 0  # examples held out of the training set; 0 is the paper's protocol (no validation)
    split_seed: int = 0  # seeds the validation split (kept apart from train.seed so seeds share a split)
    num_workers: int = 4  # DataLoader workers, used only by recipes with RandAugment
    synthetic_train: int = 256
    synthetic_test: int = 128


@dataclass
class ModelConfig:
    arch: str = field(default="hopfield_resnet13", metadata=choices(*EP_ARCHS, *BP_ARCHS))
    width: float = 1.0  # channel multiplier (1 = the paper's 128-256-512-512)
    activation: str = field(default="relu6", metadata=choices(*ACTIVATIONS))
    alpha_range: list[float] = field(default_factory=lambda: list(AUTHORS_ALPHA_RANGE))  # relu_random caps
    blocks: int = 4  # hopfield_resnet and hopfield_plain only
    gains: list[float] | None = None  # per-edge init gains; None: the authors'


# The ep.* keys that are not estimator settings: what the learner and the recipe do around the estimator.
RUN_KEYS = (
    ("eval_iterations", int, field(default=120)),  # sweeps of evaluation's relaxation (from zero states)
    # the free phase starts from the previous batch's +β state, as in the authors' code
    ("warm_start", bool, field(default=True)),
    ("channels_last", bool, field(default=False)),  # NHWC weights and states (faster convs; same to rounding)
    # A named setting of the other ep.* keys (ep_core/training/recipes.py): `authors` (their code's
    # relaxation, the default), `fast` (the same plain sweeps in truncated phases) or `adaptive`
    # (tolerance-stopped, Anderson-accelerated phases); keys set explicitly win.
    ("recipe", str, field(default="authors", metadata=choices(*RECIPES))),
    # `auto`: the cosine with the converged CEP gradient its sweep counts keep, and its fewest free sweeps
    ("auto_target", float, field(default=0.9)),
    ("auto_floor", int, field(default=10)),
)


def _ep_section() -> type:
    """EPConfig, the `ep` section: every EquilibriumProp field as the key of its name, with its type, default
    and choices (ep_core/numerics/estimators.py documents them), then RUN_KEYS. `beta` defaults to null
    ("auto"): `resolve` sets 0.1 on CIFAR-10, 0.15 otherwise (the authors' README)."""
    hints = typing.get_type_hints(EquilibriumProp)
    settings = [
        (f.name, hints[f.name], field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(EquilibriumProp)
    ]
    settings = [("beta", float | None, field(default=None)) if s[0] == "beta" else s for s in settings]
    section = dataclasses.make_dataclass("EPConfig", [*settings, *RUN_KEYS])
    section.__module__ = __name__  # where pickle and readers look for it (make_dataclass says `types`)
    return section


EPConfig = _ep_section()


@dataclass
class OptimConfig:
    optimizer: str | None = field(default=None, metadata=choices(*OPTIMIZERS))  # auto: per model family
    lr: float | list[float] | None = None  # one value, or one per parameter tensor (in parameter order)
    weight_decay: float | list[float] | None = None
    momentum: float = 0.9
    nesterov: bool = True
    scheduler: str | None = field(default=None, metadata=choices(*SCHEDULERS))
    eta_min: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    checkpoint_every: int = 1  # epochs between checkpoints (SIGTERM always checkpoints)
    max_batches: int | None = None  # cap on training batches per epoch (smoke tests and benchmarks)
    # Gradient-fidelity monitor (ep_core/training/fidelity.py): steps between probes of the run's gradient
    # against the converged CEP gradient; null ("auto"): every 200 steps unless the phases are the authors'
    # full fixed-length ones (or the model is a backprop one); 0: off.
    fidelity_every: int | None = None
    fidelity_batch: int = 16  # training examples in the fixed probe batch
    fidelity_min: float = 0.9  # a probe's cosine below this prints one warning line (docs/benchmarks.md)
    # A hidden layer dead after an epoch (ep_core/training/dead_layers.py) ends the run there, recorded as
    # diverged (it gets no gradient). false (the authors' behaviour): one warning line, and training goes on.
    stop_on_dead_layer: bool = False


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ep: EPConfig = field(default_factory=EPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def is_ep(self) -> bool:
        return self.model.arch in EP_ARCHS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{'ep.beta': 0.1, ...}: the dotted names used as MLflow params and table columns."""
        return {f"{s}.{k}": v for s, section in self.to_dict().items() for k, v in section.items()}


# --- building from YAML / dicts / --set -----------------------------------------------------------------


def _check_value(key: str, value: Any, hint: Any, meta: dict) -> Any:
    """Coerce `value` to the annotated type or raise a one-line ConfigError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key}: must not be null")
    for option in options:
        if option is type(None):
            continue
        coerced = _coerce(value, option)
        if coerced is not _NO:
            if "choices" in meta and coerced not in meta["choices"]:
                raise ConfigError(
                    f"{key}: {coerced!r} is not allowed; valid choices: {', '.join(meta['choices'])}"
                )
            return coerced
    allowed = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
    raise ConfigError(f"{key}: expected {allowed}, got {value!r}")


_NO = object()


def _coerce(value: Any, option: Any) -> Any:
    if typing.get_origin(option) is list:
        (item,) = typing.get_args(option)
        if not isinstance(value, list | tuple):
            return _NO
        items = [_coerce(v, item) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if option is bool:
        return value if isinstance(value, bool) else _NO
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if option is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string: accept the spelling
            try:
                value = float(value)
            except ValueError:
                return _NO
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return _NO
    if option is str:
        return value if isinstance(value, str) else _NO
    return _NO


def _type_name(option: Any) -> str:
    if typing.get_origin(option) is list:
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural[typing.get_args(option)[0]]}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[option]


def _build_section(cls: type, name: str, values: dict) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}; valid keys in {name}: {', '.join(fields)}")
    kwargs = {
        k: _check_value(f"{name}.{k}", v, hints[k], dict(fields[k].metadata)) for k, v in values.items()
    }
    return cls(**kwargs)


def build_config(values: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from nested dict values plus `key=value` overrides (values parsed as YAML)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in (values or {}).items()}
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set expects section.key=value (e.g. ep.beta=0.2), got {item!r}")
        if section not in sections:
            raise ConfigError(
                f"unknown section {section!r} in {item!r}; valid sections: {', '.join(sections)}"
            )
        values.setdefault(section, {})[name] = yaml.safe_load(raw) if raw.strip() else None
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; valid sections: {', '.join(sections)}")
    values = apply_recipe(values, ConfigError)
    hints = typing.get_type_hints(RunConfig)
    built = {name: _build_section(hints[name], name, values.get(name, {})) for name in sections}
    return validate(RunConfig(**built))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return build_config(values, overrides)


def validate(c: RunConfig) -> RunConfig:
    """Range checks that types alone cannot express."""
    positive = {
        "model.width": c.model.width, "train.epochs": c.train.epochs, "train.batch_size": c.train.batch_size,
        "train.eval_batch_size": c.train.eval_batch_size, "train.checkpoint_every": c.train.checkpoint_every,
        "model.blocks": c.model.blocks,
    }  # fmt: skip
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    # A run's free phase starts from zeros or another batch's states, never from its fixed point, so it must
    # relax (the estimator alone takes 0 free sweeps: a start that is the free state); evaluation likewise.
    for key in ("free_iterations", "eval_iterations"):
        if getattr(c.ep, key) < 1:
            raise ConfigError(f"ep.{key}: must be >= 1, got {getattr(c.ep, key)}")
    # beta null ("auto") resolves to a value either estimator takes: the rest is checked at the default beta
    estimator_settings(c.ep, **({} if c.ep.beta is not None else {"beta": EquilibriumProp.beta}))
    _check_ranges(c)
    if c.data.val_size < 0:
        raise ConfigError(f"data.val_size: must be >= 0, got {c.data.val_size}")
    if len(c.model.alpha_range) != 2 or not 0 <= c.model.alpha_range[0] < c.model.alpha_range[1]:
        raise ConfigError(
            f"model.alpha_range: must be [low, high] with 0 <= low < high, got {c.model.alpha_range}"
        )
    if c.model.gains is not None and c.model.arch in BP_ARCHS:
        raise ConfigError(f"model.gains: applies to the EP networks only, not {c.model.arch}")
    if c.train.max_batches is not None and c.train.max_batches < 1:
        raise ConfigError(f"train.max_batches: must be >= 1 or null, got {c.train.max_batches}")
    _check_fidelity(c)
    return c


def _check_fidelity(c: RunConfig) -> None:
    """The monitor's and `ep.recipe: auto`'s settings (ep_core/training/fidelity.py)."""
    t, e = c.train, c.ep
    if t.fidelity_every is not None and t.fidelity_every < 0:
        raise ConfigError(
            f"train.fidelity_every: must be >= 0 (0: off) or null (auto), got {t.fidelity_every}"
        )
    if t.fidelity_batch < 1:
        raise ConfigError(f"train.fidelity_batch: must be >= 1, got {t.fidelity_batch}")
    for key, value in (("train.fidelity_min", t.fidelity_min), ("ep.auto_target", e.auto_target)):
        if not -1 <= value <= 1:
            raise ConfigError(f"{key}: a cosine, must be in [-1, 1], got {value}")
    if e.auto_floor < 1:
        raise ConfigError(f"ep.auto_floor: must be >= 1, got {e.auto_floor}")
    if e.recipe == "auto":
        if not c.is_ep:
            raise ConfigError(f"ep.recipe: auto trains EP networks only, not {c.model.arch}")
        if t.fidelity_every == 0:
            raise ConfigError(
                "ep.recipe: auto chooses its sweeps from the monitor: train.fidelity_every must not be 0"
            )
        if e.tol is not None or e.nudge_tol is not None:
            raise ConfigError(
                "ep.recipe: auto sets fixed-length phases: ep.tol and ep.nudge_tol must be null"
            )


def estimator_settings(ep: EPConfig, **changes: Any) -> EquilibriumProp:
    """The estimator an `ep` section sets: each EquilibriumProp field from the key of its name (so none is
    left behind), then `changes`. A bad setting is a ConfigError on its `ep.` key."""
    settings = {f.name: getattr(ep, f.name) for f in dataclasses.fields(EquilibriumProp)}
    try:
        return EquilibriumProp(**settings | changes)
    except SettingError as error:
        raise _config_error(error) from None


def _config_error(error: SettingError) -> ConfigError:
    """The estimator's message in the configuration's words: `ep.` keys, and YAML's null for None."""
    reason = re.sub(r"\bNone\b", "null", error.reason)
    if error.related:
        reason = re.sub(rf"\b({'|'.join(error.related)})\b", r"ep.\1", reason)
    return ConfigError(f"ep.{error.key}: {reason}")


def _values(value: float | list[float] | None) -> list[float]:
    return [] if value is None else value if isinstance(value, list) else [value]


def _check_ranges(c: RunConfig) -> None:
    """Numbers outside the range where they mean something (torch would accept some, silently)."""
    o = c.optim
    if any(not v > 0 for v in _values(o.lr)):
        raise ConfigError(f"optim.lr: must be > 0 (one number or one per tensor), got {o.lr}")
    if any(v < 0 for v in _values(o.weight_decay)):
        raise ConfigError(
            f"optim.weight_decay: must be >= 0 (one number or one per tensor), got {o.weight_decay}"
        )
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum: must be in [0, 1), got {o.momentum}")
    if o.eta_min is not None and o.eta_min < 0:
        raise ConfigError(f"optim.eta_min: must be >= 0 or null, got {o.eta_min}")
    minimum = {"train.seed": (c.train.seed, 0), "data.split_seed": (c.data.split_seed, 0),
               "data.num_workers": (c.data.num_workers, 0),
               "data.synthetic_train": (c.data.synthetic_train, 1),
               "data.synthetic_test": (c.data.synthetic_test, 1)}  # fmt: skip
    for key, (value, low) in minimum.items():
        if value < low:
            raise ConfigError(f"{key}: must be >= {low}, got {value}")
    if c.model.gains is not None and any(not g > 0 for g in c.model.gains):
        raise ConfigError(f"model.gains: must all be > 0, got {c.model.gains}")
    _check_fits_in_memory(c.model.width, c.model.arch)


# Bytes per parameter a training run holds at least: float32 weights, their gradient, the optimizer's state.
BYTES_PER_PARAMETER = 3 * 4


def _check_fits_in_memory(width: float, arch: str) -> None:
    """Reject widths whose network cannot fit in this machine's memory, before anything is allocated. The
    estimate is a lower bound (never rejects a network that fits): every architecture has a 3×3
    convolution between two last-stage layers of 512·width channels, 9·(512·width)² weights."""
    channels = max(1, round(512 * width))
    parameters = 9 * channels**2
    needed = parameters * BYTES_PER_PARAMETER
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ConfigError(
            f"model.width: {width:g} gives {arch} at least {parameters:.2e} parameters, which need at least "
            f"{needed / 2**30:.3g} GiB (weights, gradients, optimizer state); this machine has "
            f"{available / 2**30:.3g} GiB"
        )


def resolve(c: RunConfig) -> RunConfig:
    """Fill every 'auto' (None) field with the authors' value for this dataset and model family."""
    c = dataclasses.replace(
        c,
        data=dataclasses.replace(c.data),
        ep=dataclasses.replace(c.ep),
        optim=dataclasses.replace(c.optim),
        train=dataclasses.replace(c.train),
    )
    dataset, arch = c.data.name, c.model.arch
    if c.data.preset == "auto":
        c.data.preset = {"resnet13": "authors_bp_resnet", "vgg5_bp": "authors_bp_vgg"}.get(arch, "authors_ep")
    if c.ep.beta is None:
        c.ep.beta = 0.1 if dataset == "cifar10" else 0.15
    o = c.optim
    if c.is_ep:
        defaults = {"optimizer": "sgd", "lr": 0.03, "scheduler": "cosine", "eta_min": 2e-6,
                    "weight_decay": 2.5e-4 if dataset == "cifar10" else 3.5e-4}  # fmt: skip
        if o.optimizer == "adamw":
            defaults["lr"] = 1e-4
    elif arch == "resnet13":  # BackProp/resnet.py: Adam with coupled L2, no schedule
        defaults = {
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 2.5e-4,
            "scheduler": "none",
            "eta_min": 0.0,
        }
    else:  # BackProp/vgg.py: SGD-Nesterov 0.1, wd 5e-4, cosine to 0
        defaults = {
            "optimizer": "sgd",
            "lr": 0.1,
            "weight_decay": 5e-4,
            "scheduler": "cosine",
            "eta_min": 0.0,
        }
    for key, value in defaults.items():
        if getattr(o, key) is None:
            setattr(o, key, value)
    if c.train.fidelity_every is None:
        c.train.fidelity_every = _fidelity_every(c)
    return c


def _fidelity_every(c: RunConfig) -> int:
    """`train.fidelity_every: null`: on (FIDELITY_EVERY) for an EP run whose phases stop short of the
    authors' full fixed-length ones (a shorter count, a tolerance, or `auto`); off otherwise."""
    e, authors = c.ep, EquilibriumProp()
    full = (
        e.free_iterations >= authors.free_iterations
        and e.nudge_iterations >= authors.nudge_iterations
        and e.tol is None
        and e.nudge_tol is None
    )
    return FIDELITY_EVERY if c.is_ep and (e.recipe == "auto" or not full) else 0


def dump_config(c: RunConfig) -> str:
    return yaml.safe_dump(c.to_dict(), sort_keys=False)
