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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..numerics.activations import ACTIVATIONS, AUTHORS_ALPHA_RANGE
from ..numerics.backprop import BP_NETWORKS
from ..numerics.costs import COSTS
from ..numerics.estimators import VARIANTS
from ..numerics.networks import NETWORKS
from ..numerics.orders import ORDERS
from ..numerics.relaxation import SOLVERS
from .datasets import DATASETS
from .datasets import PRESETS as DATA_PRESETS
from .recipes import RECIPES, apply_recipe

EP_ARCHS = tuple(NETWORKS)
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


@dataclass
class EPConfig:
    estimator: str = field(default="cep", metadata=choices(*VARIANTS))
    beta: float | None = None  # auto: 0.1 on CIFAR-10, 0.15 otherwise (the authors' README)
    free_iterations: int = 120
    nudge_iterations: int = 50
    eval_iterations: int = 120
    order: str = field(default="even_odd", metadata=choices(*ORDERS))
    # over-relaxation of every layer update, s <- clip(s + omega (u - s)): 1 = the authors' plain sweeps;
    # 0 < omega < 2, and > 1 needs an order that is a proper colouring (coloring; even_odd on VGG5)
    omega: float = 1.0
    nudge_omega: float | None = None  # the nudged phases' own over-relaxation; null: ep.omega
    cost: str = field(default="mse", metadata=choices(*COSTS))
    warm_start: bool = True  # free phase starts from the previous batch's +β state, as in the authors' code
    clip_norm: float | None = 1.0  # the authors clip the global gradient norm at 1.0; null disables
    tol: float | None = None  # early stop of each phase (nudged: of its displacement); changes results
    nudge_tol: float | None = None  # the nudged phases' own tolerance on their displacement; null: ep.tol
    batch_phases: bool = True  # run the ±β phases as one stacked batch (same result, fewer kernel launches)
    # Speed (docs/benchmarks.md). solver: fixed_point = the authors' plain sweeps; anderson = Anderson mixing
    # of the free phase's sweeps (same fixed point, fewer sweeps to a given tol; nudged phases stay plain).
    solver: str = field(default="fixed_point", metadata=choices(*SOLVERS))
    # nudged phases: fixed_point (plain sweeps) or anderson (the ±β copies of an example share their mixing)
    nudge_solver: str = field(default="fixed_point", metadata=choices(*SOLVERS))
    anderson_memory: int = 5  # iterates the anderson solver mixes
    channels_last: bool = False  # NHWC weights and states (faster convs; the same result to rounding)
    compile: bool = False  # torch.compile the relaxation sweeps (compiles once per phase shape)
    cuda_graphs: bool = False  # CUDA only: each fixed-length phase replays as one CUDA graph (needs tol null)
    chunk_size: int | None = None  # relax at most this many examples at once (peak memory); null: the batch
    # this many of the free phase's first sweeps (fewer if ep.tol stops them) in bf16 on a bf16 copy of the
    # network, the rest of the phase in the run's precision (ep_core/precision.py); 0: off
    bf16_sweeps: int = 0
    # A named setting of the keys above (ep_core/recipes.py): `authors` (their code's relaxation, the
    # default), `fast` (the same plain sweeps in truncated phases) or `adaptive` (tolerance-stopped,
    # Anderson-accelerated phases); keys set explicitly win.
    recipe: str = field(default="authors", metadata=choices(*RECIPES))


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
    for key in ("free_iterations", "nudge_iterations", "eval_iterations"):  # 0: no relaxation, no gradient
        if getattr(c.ep, key) < 1:
            raise ConfigError(f"ep.{key}: must be >= 1, got {getattr(c.ep, key)}")
    _check_ranges(c)
    if c.ep.beta is not None and (c.ep.beta <= 0 if c.ep.estimator == "cep" else c.ep.beta == 0):
        need = "> 0 (centered EP nudges with -beta and +beta)" if c.ep.estimator == "cep" else "!= 0"
        raise ConfigError(f"ep.beta: must be {need}, got {c.ep.beta}")
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
    if c.ep.anderson_memory < 1:
        raise ConfigError(f"ep.anderson_memory: must be >= 1, got {c.ep.anderson_memory}")
    tolerances = (c.ep.tol, c.ep.nudge_tol)
    if c.ep.cuda_graphs and (any(t is not None for t in tolerances) or c.ep.solver != "fixed_point"):
        raise ConfigError(
            "ep.cuda_graphs: needs fixed-length phases (ep.tol and ep.nudge_tol null, ep.solver fixed_point)"
        )
    if c.ep.nudge_solver == "anderson" and c.ep.estimator == "cep" and not c.ep.batch_phases:
        raise ConfigError(
            "ep.nudge_solver: anderson with centered EP needs ep.batch_phases true (the -beta and +beta "
            "copies share their mixing coefficients)"
        )
    if c.ep.bf16_sweeps < 0:
        raise ConfigError(f"ep.bf16_sweeps: must be >= 0 (0: off), got {c.ep.bf16_sweeps}")
    if c.ep.bf16_sweeps and c.ep.cuda_graphs:
        raise ConfigError("ep.bf16_sweeps: not with ep.cuda_graphs (graphed phases are all one precision)")
    if c.ep.chunk_size is not None and c.ep.chunk_size < 1:
        raise ConfigError(f"ep.chunk_size: must be >= 1 or null, got {c.ep.chunk_size}")
    for key in ("omega", "nudge_omega"):
        value = getattr(c.ep, key)
        if value is not None and not 0 < value < 2:
            raise ConfigError(f"ep.{key}: must satisfy 0 < omega < 2, got {value}")
    for key in ("clip_norm", "tol", "nudge_tol"):
        value = getattr(c.ep, key)
        if value is not None and value <= 0:
            raise ConfigError(f"ep.{key}: must be positive or null, got {value}")
    return c


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
    return c


def dump_config(c: RunConfig) -> str:
    return yaml.safe_dump(c.to_dict(), sort_keys=False)
