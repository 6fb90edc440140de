"""Weights and training state on disk without pickle execution: safetensors for tensors,
``torch.load(weights_only=True)`` for optimizer state, JSON for counters."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from raykd.errors import UserError


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_weights(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(unwrap(model), str(path))
    return path


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load safetensors weights (a file, or a directory holding ``model.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise UserError(f"{path}: no such weights file")
    try:
        load_model(unwrap(model), str(path), strict=strict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: these weights do not fit the configured architecture ({first})") from None
    return model


def save_state(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
               state: dict, extra_modules: dict[str, nn.Module] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / "model.safetensors")
    for name, mod in (extra_modules or {}).items():
        if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
            save_weights(mod, directory / f"{name}.safetensors")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps(state, default=float))  # numpy / 0-d tensor scalars
    return directory


def load_state(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
               extra_modules: dict[str, nn.Module] | None = None) -> dict:
    directory = Path(directory)
    load_weights(model, directory / "model.safetensors")
    for name, mod in (extra_modules or {}).items():
        f = directory / f"{name}.safetensors"
        if f.exists():
            load_weights(mod, f)
    if optimizer is not None and (directory / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu"))
    return json.loads((directory / "state.json").read_text())
