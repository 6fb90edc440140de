"""Where raykd keeps its cache (fetched artifacts, unpacked arrays, trained teachers)."""

from __future__ import annotations

import os
from pathlib import Path


def raykd_home() -> Path:
    """``$RAYKD_HOME`` or ``~/.cache/raykd``; created on first use."""
    home = Path(os.environ.get("RAYKD_HOME", Path.home() / ".cache" / "raykd")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(*parts: str) -> Path:
    path = raykd_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so a crash leaves nothing half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
