"""Bring your own data: IDX, CSV/TSV, parquet or a saved Hugging Face ``datasets`` directory.

Tables have a label column (``label_column``, default ``label``) and either a text column
(``text_column``, default ``text``) or pixel columns (all other columns, reshaped to
``image_shape``, default square, 1 channel). IDX directories hold the standard
``train-images-idx3-ubyte[.gz]``/``t10k-...`` files. A Hugging Face directory is one written by
``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (its Arrow files are read with pyarrow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from raykd.errors import UserError

FORMATS = ("idx", "csv", "tsv", "parquet", "hf")


def guess_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf"
        if any(path.glob("*-idx3-ubyte*")):
            return "idx"
        raise UserError(f"data.path {path}: a directory that is neither a saved Hugging Face dataset nor IDX files; set data.format")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    for fmt, sfx in (("csv", ".csv"), ("tsv", ".tsv"), ("parquet", ".parquet"), ("tsv", ".txt")):
        if suffix.startswith(sfx):
            return fmt
    raise UserError(f"data.path {path}: cannot tell the format from the name; set data.format to one of {', '.join(FORMATS)}")


def _read_hf(path: Path, split: str) -> pd.DataFrame:
    import pyarrow as pa

    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise UserError(f"data.path {path}: no split {split!r} in this dataset (it has {', '.join(splits)})")
        path = path / split
    state = json.loads((path / "state.json").read_text())
    tables = []
    for f in state["_data_files"]:
        with pa.memory_map(str(path / f["filename"])) as src:
            tables.append(pa.ipc.open_stream(src).read_all())
    return pa.concat_tables(tables).to_pandas()


def _frame_to_arrays(df: pd.DataFrame, where: str, text_column: str, label_column: str,
                     image_shape: list[int] | None) -> dict[str, np.ndarray]:
    if label_column not in df.columns:
        raise UserError(f"{where}: no label column {label_column!r} (columns: {', '.join(map(str, df.columns[:8]))}...); set data.label_column")
    labels = df[label_column]
    if not pd.api.types.is_integer_dtype(labels):
        cats = sorted(labels.astype(str).unique())
        labels = labels.astype(str).map({c: i for i, c in enumerate(cats)})
    y = labels.to_numpy(np.int64)
    if text_column in df.columns:
        return {"text": df[text_column].astype(str).to_numpy(dtype=object), "label": y}
    pixels = df.drop(columns=[label_column]).to_numpy()
    n = pixels.shape[1]
    shape = list(image_shape) if image_shape else [1, math.isqrt(n), math.isqrt(n)]
    if int(np.prod(shape)) != n:
        raise UserError(f"{where}: {n} pixel columns do not fit data.image_shape {shape}")
    if pixels.max(initial=0) > 255 or pixels.min(initial=0) < 0:
        raise UserError(f"{where}: pixel values must lie in 0..255")
    return {"x": pixels.astype(np.uint8).reshape(-1, *shape), "label": y}


def load_user(path: str | Path, split: str = "train", fmt: str | None = None, text_column: str = "text",
              label_column: str = "label", image_shape: list[int] | None = None) -> dict[str, np.ndarray]:
    """Arrays (same layout as :func:`raykd.data.load`) from a user's own file or directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data.path {path}: no such file or directory")
    fmt = fmt or guess_format(path)
    if fmt == "idx":
        from raykd.data.vision import _idx_pair

        x, y = _idx_pair(path, "train" if split == "train" else "t10k")
        return {"x": x, "label": y}
    if fmt == "hf":
        df = _read_hf(path, split)
    elif fmt in ("csv", "tsv"):
        df = pd.read_csv(path, sep="," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        df = pd.read_parquet(path)
    else:
        raise UserError(f"data.format {fmt!r}: unknown; use one of {', '.join(FORMATS)}")
    return _frame_to_arrays(df, f"data.path {path}", text_column, label_column, image_shape)
