"""The dataset files of CIFAR-10/100 and Fashion-MNIST in torchvision's on-disk format, read without
torchvision's dataset classes so that a malformed file is a one-line error naming it and what was expected.

No md5 here: torchvision checks md5 sums on download (ep_core.training.datasets.download), and loading
needs only files that exist and parse.
"""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def torchvision_class(name: str) -> type:
    """torchvision's dataset class of ``name`` (cifar10, cifar100 or fashion_mnist): its file lists, md5s,
    folders and download."""
    from torchvision import datasets as tvd

    return {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion_mnist": tvd.FashionMNIST}[name]


def required_files(name: str, root: Path) -> dict[Path, str | None]:
    """The files torchvision reads for ``name`` -> their md5 (None: torchvision checks only existence)."""
    cls = torchvision_class(name)
    if name == "fashion_mnist":  # torchvision reads the extracted idx files; its md5s are the archives'
        return {root / "FashionMNIST" / "raw" / Path(f).stem: None for f, _ in cls.resources}
    files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return {root / cls.base_folder / f: md5 for f, md5 in files}


def _unpickle(path: Path, expected: str) -> Any:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")  # as torchvision: CIFAR's pickles hold Python 2 str
    # Unpickling a damaged or foreign file can raise almost anything (EOFError, UnpicklingError,
    # AttributeError, ImportError, ...: the pickle docs do not bound the list).
    except Exception as error:
        reason = type(error).__name__
        raise ValueError(f"{path}: cannot be unpickled ({reason}); expected {expected}") from None


def _read_cifar(path: Path, label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """One CIFAR batch file as torchvision reads it: (N, 3, 32, 32) uint8 images and int64 labels."""
    expected = f"a pickled dict with 'data' (N x 3072 uint8) and {label_key!r} (N labels < {num_classes})"
    entry = _unpickle(path, expected)
    if not isinstance(entry, dict) or not {"data", label_key} <= entry.keys():
        found = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path}: expected {expected}, found {found}")
    data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
    n = len(data)
    if data.dtype != np.uint8 or data.shape != (n, 3072) or labels.shape != (n,):
        raise ValueError(
            f"{path}: expected {expected}, found data {data.dtype} {data.shape} and {labels.shape[0]} labels"
        )
    integers = np.issubdtype(labels.dtype, np.integer)
    if n and not (integers and 0 <= labels.min() <= labels.max() < num_classes):
        raise ValueError(f"{path}: expected {expected}, found labels outside 0..{num_classes - 1}")
    return torch.from_numpy(data.reshape(n, 3, 32, 32)), torch.from_numpy(labels.astype(np.int64))


def _read_idx(path: Path, dims: tuple[int, ...]) -> Tensor:
    """A Fashion-MNIST idx file of uint8 with trailing dimensions ``dims``, as (N, *dims)."""
    ndim = 1 + len(dims)
    magic, header = 0x800 + ndim, 4 + 4 * ndim  # 0x08: uint8
    shape = " x ".join(["N", *map(str, dims)])
    raw = path.read_bytes()
    found = int.from_bytes(raw[:4], "big") if len(raw) >= header else None
    if found != magic:
        what = f"0x{found:08x}" if found is not None else f"{len(raw)} bytes"
        raise ValueError(
            f"{path}: expected an idx file with magic 0x{magic:08x} (uint8, {shape}), found {what}"
        )
    n, *rest = struct.unpack(f">{ndim}i", raw[4:header])
    found_shape, size = " x ".join(map(str, [n, *rest])), header + n * math.prod(dims)
    if tuple(rest) != dims:
        raise ValueError(f"{path}: expected {shape} uint8 values, found {found_shape}")
    if len(raw) != size:
        raise ValueError(
            f"{path}: expected {size} bytes (the header and {found_shape} uint8 values), found {len(raw)}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).view(n, *dims)


def _read_fmnist(raw: Path, prefix: str) -> tuple[Tensor, Tensor]:
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", (28, 28))
    labels_path = raw / f"{prefix}-labels-idx1-ubyte"
    labels = _read_idx(labels_path, ())
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: expected {len(images)} labels (one per image), found {len(labels)}")
    if len(labels) and int(labels.max()) >= 10:
        raise ValueError(f"{labels_path}: expected labels 0..9, found {int(labels.max())}")
    x = F.pad(images.unsqueeze(1), (2, 2, 2, 2))  # the authors' Pad(2, fill=0), once
    return x, labels.long()


def read_files(name: str, root: Path, num_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Read torchvision's files of ``name`` (existence and format checked, not md5: see ``download``)."""
    if not all(p.is_file() for p in required_files(name, root)):
        raise ValueError(
            f"{name} not found under {root}: run 'ep-core download --dataset {name} --data-dir {root}'"
        )
    if name == "fashion_mnist":
        raw = root / "FashionMNIST" / "raw"
        return *_read_fmnist(raw, "train"), *_read_fmnist(raw, "t10k")
    cls = torchvision_class(name)
    K, folder = num_classes, root / cls.base_folder
    label_key = "labels" if name == "cifar10" else "fine_labels"
    # Training needs no class names, but a meta file that is not CIFAR's says the folder is not either.
    meta, expected = folder / cls.meta["filename"], f"a pickled dict with {cls.meta['key']!r}"
    entry = _unpickle(meta, expected)
    if not isinstance(entry, dict) or cls.meta["key"] not in entry:
        raise ValueError(f"{meta}: expected {expected}")
    out = []
    for files in (cls.train_list, cls.test_list):
        parts = [_read_cifar(folder / f, label_key, K) for f, _ in files]
        out += [torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])]
    return out[0], out[1], out[2], out[3]
