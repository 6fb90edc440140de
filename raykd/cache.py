"""Build-once cache entries that several processes may reach first at the same time.

Every entry under ``$RAYKD_HOME`` (unpacked datasets, the MiniLM tree, trained teachers, teacher
outputs, sentence embeddings) is a directory built by exactly one process while the others wait:

1. fast path: the entry is complete (its manifest ``.complete.json`` exists and every file it lists
   has the recorded size) and loads: use it, no lock taken;
2. otherwise take a file lock beside the entry (``filelock``: an OS lock that is released if its
   holder dies, so a crashed builder never blocks the others) and check again, since another process
   may have finished it while this one waited;
3. build into a fresh temporary directory beside the entry, write the manifest last, and rename the
   directory into place. A crash mid-build leaves only a temporary directory, never an entry that a
   later run mistakes for complete.

Nothing a reader of a complete entry uses is deleted or rewritten; an entry that turns out to be
damaged (a file truncated or overwritten after it was written) is rebuilt and swapped in by rename.
Locks work across the workers of one node, several runs, and nodes sharing a POSIX file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from filelock import FileLock, Timeout

from raykd.errors import UserError
from raykd.registry import FILE_ARGS

T = TypeVar("T")
MANIFEST = ".complete.json"


def _log(msg: str) -> None:
    print(f"[raykd] {msg}", flush=True)


@contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold the build lock of the cache entry at ``path`` (waiting, with a message, if another process holds it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log(f"{what}: another process is building {path}; waiting for it")
        t0 = time.monotonic()
        lock.acquire()
        _log(f"{what}: ready after {time.monotonic() - t0:.0f}s of waiting")
    try:
        yield
    finally:
        lock.release()


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a manifest and every file it lists has its recorded size."""
    manifest = Path(path) / MANIFEST
    try:
        sizes = json.loads(manifest.read_text())["files"]
        return all((Path(path) / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_manifest(directory: Path) -> None:
    files = {str(p.relative_to(directory)): p.stat().st_size
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"files": files, "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                  "pid": os.getpid()}))


def _install(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` to ``path``; a damaged entry already there is renamed aside first."""
    if path.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, trash / path.name)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _build(path: Path, build: Callable[[Path], None]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.build.", dir=path.parent))
    try:
        build(tmp)
        _write_manifest(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the entry is shared like any cache directory
        _install(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _try_load(path: Path, load: Callable[[Path], T], what: str, warn: bool) -> tuple[bool, T | None]:
    if not is_complete(path):
        if warn and path.exists():
            _log(f"{what}: cache entry {path} is incomplete or damaged; rebuilding it")
        return False, None
    try:
        return True, load(path)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # a file damaged after the entry was written: rebuild it
        if warn:
            _log(f"{what}: cache entry {path} cannot be read ({type(e).__name__}: {e}); rebuilding it")
        return False, None


def entry(path: str | Path, build: Callable[[Path], None], load: Callable[[Path], T] = lambda p: p,
          what: str = "cache") -> T:
    """``load(path)`` of the cache entry at ``path``, building it first with ``build(tmp_dir)`` if it is
    missing, incomplete or cannot be loaded. ``build`` writes the entry's files into the directory it is
    given; only one process builds, the others wait for it and then read."""
    path = Path(path)
    ok, value = _try_load(path, load, what, warn=False)
    if ok:
        return value
    with locked(path, what):
        ok, value = _try_load(path, load, what, warn=True)
        if ok:
            return value
        _build(path, build)
    return load(path)


def files_fingerprint(args: dict) -> str | None:
    """Identifies the local files a model's ``args`` name (``path``, ``weights``, ``config``, ``tokenizer``):
    names, sizes and modification times, so a cache keyed on it misses when a user's model changes;
    None when the args name no files."""
    import hashlib

    seen = []
    for key in FILE_ARGS:
        value = args.get(key)
        p = Path(str(value)).expanduser() if isinstance(value, str) else None
        if p is None or not p.exists():
            continue
        files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
        seen += [(key, str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:16] if seen else None
