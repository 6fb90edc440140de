"""Weights and training state on disk without pickle execution: safetensors for tensors,
``torch.load(weights_only=True)`` for optimizer state, JSON for counters."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from raykd.errors import UserError

T = TypeVar("T")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read (truncated, empty, another format)."""


def _damaged(path: Path, what: str, e: Exception) -> DamagedCheckpoint:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return DamagedCheckpoint(f"{path}: {what} cannot be read ({type(e).__name__}: {first}); the file is damaged or "
                             "truncated: use another checkpoint, or delete it to start over")


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename to ``path``: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: save_model(unwrap(model), str(tmp)))
    return path


def _weights_path(path: str | Path) -> Path:
    """A weights file given as itself or as a directory holding ``model.safetensors``; it must exist."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise UserError(f"{path}: no such weights file")
    return path


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load safetensors weights (a file, or a directory holding ``model.safetensors``)."""
    path = _weights_path(path)
    try:
        missing, unexpected = load_model(unwrap(model), str(path), strict=False)
    except SafetensorError as e:
        raise _damaged(path, "these safetensors weights", e) from None
    except RuntimeError as e:  # shapes that do not fit the architecture
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: these weights do not fit the configured architecture ({first})") from None
    if strict and (missing or unexpected):
        names = ", ".join((list(missing) + list(unexpected))[:3])
        raise UserError(f"{path}: these weights do not fit the configured architecture ({len(missing)} tensors missing, "
                        f"{len(unexpected)} unexpected, e.g. {names}); check the model name and args")
    return model


def check_weights_file(path: str | Path) -> None:
    """Refuse an unreadable safetensors file (a directory: its ``model.safetensors``) without loading the weights."""
    from safetensors import safe_open

    path = _weights_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise _damaged(path, "these safetensors weights", e) from None


def save_state(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
               state: dict, extra_modules: dict[str, nn.Module] | None = None) -> Path:
    """Write a training checkpoint: every file by rename, and ``state.json`` last, listing the files and
    their sizes, so a checkpoint is complete exactly when its ``state.json`` says so."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / "model.safetensors")
    for name, mod in (extra_modules or {}).items():
        if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
            save_weights(mod, directory / f"{name}.safetensors")
    if optimizer is not None:
        _atomic(directory / "optimizer.pt", lambda tmp: torch.save(optimizer.state_dict(), tmp))
    files = {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != "state.json"}  # with the finished jobs' models under done/
    blob = json.dumps({**state, "_files": files}, default=float).encode()  # numpy / 0-d tensor scalars
    _atomic(directory / "state.json", lambda tmp: tmp.write_bytes(blob))
    return directory


def read_state(directory: str | Path) -> dict:
    """The counters of a checkpoint, after checking that every file it lists is there whole."""
    directory = Path(directory)
    f = directory / "state.json"
    try:
        state = json.loads(f.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise _damaged(f, "the checkpoint's state", e) from None
    for name, size in (state.pop("_files", None) or {}).items():
        p = directory / name
        if not p.exists() or p.stat().st_size != size:
            got = p.stat().st_size if p.exists() else "missing"
            raise DamagedCheckpoint(f"{p}: {got} bytes where the checkpoint wrote {size}; the file is damaged or "
                                    "truncated: use another checkpoint, or delete it to start over")
    return state


def load_state(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
               extra_modules: dict[str, nn.Module] | None = None) -> dict:
    directory = Path(directory)
    state = read_state(directory)
    load_weights(model, directory / "model.safetensors")
    for name, mod in (extra_modules or {}).items():
        f = directory / f"{name}.safetensors"
        if f.exists():
            load_weights(mod, f)
    f = directory / "optimizer.pt"
    if optimizer is not None and f.exists():
        try:
            optimizer.load_state_dict(torch.load(f, weights_only=True, map_location="cpu"))
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError) as e:
            raise _damaged(f, "the optimizer state", e) from None
    return state


def restore_newest(checkpoint: "ray.train.Checkpoint | None", restore: Callable[[Path], T],
                   log: Callable[[str], None] = print) -> T | None:
    """``restore(dir)`` from the newest intact checkpoint of a Ray Train run: Ray's latest one first, then
    the older ones kept beside it (newest first). A damaged one is reported and skipped; None when no
    checkpoint is intact (the run starts over)."""
    if checkpoint is None:
        return None
    from pyarrow.fs import FileSelector, FileType
    from ray.train import Checkpoint

    fs, latest = checkpoint.filesystem, checkpoint.path
    parent = latest.rstrip("/").rsplit("/", 1)[0]
    try:
        siblings = [i.path for i in fs.get_file_info(FileSelector(parent))
                    if i.type == FileType.Directory and i.base_name.startswith("checkpoint_") and i.path != latest]
    except OSError:
        siblings = []
    for path in [latest] + sorted(siblings, reverse=True):
        try:
            with Checkpoint(path, filesystem=fs).as_directory() as d:
                return restore(Path(d))
        except DamagedCheckpoint as e:
            log(f"skipping a damaged checkpoint: {e}")
    log("no intact checkpoint to resume from; starting over")
    return None
