"""The torch device a setting names: `auto`, `cpu`, `cuda` or `cuda:N`, with one-line errors."""

from __future__ import annotations

import torch

from .config import ConfigError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` is CUDA when present, else the CPU; `key` names the setting in the one-line errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: {name!r} is not a device; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {name!r} requested but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}: {name!r} is not supported; valid: auto, cpu, cuda, cuda:N")
    return device
