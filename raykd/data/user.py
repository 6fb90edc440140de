"""Bring your own data: IDX, CSV/TSV, parquet or a saved Hugging Face ``datasets`` directory.

Tables have a label column (``label_column``, default ``label``) and either a text column
(``text_column``, default ``text``) or pixel columns (all other columns, reshaped to
``image_shape``, default square, 1 channel). IDX directories hold the standard
``train-images-idx3-ubyte[.gz]``/``t10k-...`` files. A Hugging Face directory is one written by
``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (its Arrow files are read with pyarrow).

Every value is checked here, on the driver, before any Ray work: a bad file fails with one sentence
naming the file, the row or column, and the fix (:class:`raykd.errors.UserError`). Labels are read
as they are (:func:`read_user`); :class:`LabelMap` turns them into class ids, one mapping per run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raykd.errors import UserError

FORMATS = ("idx", "csv", "tsv", "parquet", "hf")
MAX_CLASSES_WITHOUT_NUM_CLASSES = 1000  # integer labels past this need data.num_classes said explicitly


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


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------

def _read_hf(path: Path, split: str) -> tuple[pd.DataFrame, dict]:
    """The table of a saved Hugging Face dataset and its ``features`` description (if any)."""
    import pyarrow as pa

    try:
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
        info = path / "dataset_info.json"
        features = json.loads(info.read_text()).get("features") or {} if info.exists() else {}
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        raise UserError(f"data.path {path}: not a readable saved Hugging Face dataset ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); write it again with save_to_disk") from None
    if not tables:
        raise UserError(f"data.path {path}: the saved dataset holds no data files")
    return pa.concat_tables(tables).to_pandas(), features


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="," if fmt == "csv" else "\t", encoding="utf-8", keep_default_na=True)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"data.path {path}: the file is empty; it needs a header line and at least one row") from None
    except pd.errors.ParserError as e:
        raise UserError(f"data.path {path}: {_parser_message(e)}; every row needs the same number of fields "
                        "as the header (quote fields that contain the separator)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"data.path {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        "save the file as UTF-8") from None
    except (OSError, ValueError) as e:  # parquet: not a parquet file, truncated
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"data.path {path}: cannot read it as {fmt} ({first}); check data.format and the file") from None


def _parser_message(e: Exception) -> str:
    msg = str(e).strip().splitlines()[-1].removeprefix("Error tokenizing data. C error: ").rstrip(".")
    return msg[0].lower() + msg[1:] if msg else "cannot parse it"


def read_user(path: str | Path, split: str = "train", fmt: str | None = None, text_column: str = "text",
              label_column: str = "label", image_shape: list[int] | None = None) -> "RawData":
    """Validated inputs and raw labels of a user's file or directory (``split`` picks the IDX prefix or
    the split of a saved ``DatasetDict``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data.path {path}: no such file or directory")
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise UserError(f"data.format {fmt!r}: unknown; use one of {', '.join(FORMATS)}")
    where = f"data.path {path}"
    if fmt == "idx":
        from raykd.data.vision import _idx_pair

        x, y = _idx_pair(path, "train" if split == "train" else "t10k")
        if len(x) != len(y):
            raise UserError(f"{where}: {len(x)} images but {len(y)} labels; the two IDX files do not belong together")
        return RawData(where, {"x": x}, pd.Series(y), names=None)
    names = None
    if fmt == "hf":
        df, features = _read_hf(path, split)
        feat = features.get(label_column) or {}
        if feat.get("_type") == "ClassLabel" and feat.get("names"):
            names = tuple(map(str, feat["names"]))
    else:
        df = _read_table(path, fmt)
    return _frame_to_raw(df, where, text_column, label_column, image_shape, names)


@dataclass
class RawData:
    """One file's validated inputs (``text`` or uint8 ``x``) and its labels as written in the file."""

    where: str
    inputs: dict[str, np.ndarray]
    labels: pd.Series
    names: tuple[str, ...] | None  # class names the file declares (a Hugging Face ClassLabel), if any

    def __len__(self) -> int:
        return len(self.labels)


def _frame_to_raw(df: pd.DataFrame, where: str, text_column: str, label_column: str,
                  image_shape: list[int] | None, names: tuple[str, ...] | None) -> RawData:
    if label_column not in df.columns:
        raise UserError(f"{where}: no label column {label_column!r} (columns: {', '.join(map(str, df.columns[:8]))}"
                        f"{'...' if len(df.columns) > 8 else ''}); set data.label_column")
    if len(df) == 0:
        raise UserError(f"{where}: the file has a header but no rows; it needs at least one example per class")
    labels = df[label_column]
    missing = np.flatnonzero(labels.isna().to_numpy())
    if len(missing):
        raise UserError(f"{where}: row {missing[0] + 1} has no label (an empty or NaN cell in column "
                        f"{label_column!r}); fill it in or drop the row")
    labels = labels.reset_index(drop=True)
    if text_column in df.columns:
        text = df[text_column]
        missing = np.flatnonzero(text.isna().to_numpy())
        if len(missing):
            raise UserError(f"{where}: row {missing[0] + 1} has no text (an empty or NaN cell in column "
                            f"{text_column!r}); fill it in or drop the row")
        return RawData(where, {"text": text.astype(str).to_numpy(dtype=object)}, labels, names)
    return RawData(where, {"x": _pixels(df.drop(columns=[label_column]), where, image_shape)}, labels, names)


def _pixels(df: pd.DataFrame, where: str, image_shape: list[int] | None) -> np.ndarray:
    for col in df.columns:
        if not (pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])):
            bad = df[col][pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()]
            example = f" (row {bad.index[0] + 1} holds {str(bad.iloc[0])[:20]!r})" if len(bad) else ""
            raise UserError(f"{where}: column {col!r} is not numeric{example}; pixel columns must hold numbers 0..255 "
                            "(for text data name the text column with data.text_column)")
    pixels = df.to_numpy(dtype=np.float64)
    n = pixels.shape[1]
    shape = list(image_shape) if image_shape else [1, math.isqrt(n), math.isqrt(n)]
    if int(np.prod(shape)) != n:
        raise UserError(f"{where}: {n} pixel columns do not fit data.image_shape {shape}; set data.image_shape "
                        "(channels, height, width) or name the text column with data.text_column")

    def first(mask: np.ndarray) -> str:
        r, c = np.argwhere(mask)[0]
        return f"row {r + 1}, column {df.columns[c]!r} holds {float(pixels[r, c]):g}"

    if not np.isfinite(pixels).all():
        raise UserError(f"{where}: {first(~np.isfinite(pixels))}; every pixel needs a value 0..255")
    if ((pixels < 0) | (pixels > 255)).any():
        raise UserError(f"{where}: {first((pixels < 0) | (pixels > 255))}; pixel values must lie in 0..255")
    if (pixels != np.round(pixels)).any():
        raise UserError(f"{where}: {first(pixels != np.round(pixels))}; pixel values must be whole numbers 0..255 "
                        "(scale images stored as 0..1 floats by 255)")
    return pixels.astype(np.uint8).reshape(-1, *shape)


# ------------------------------------------------------------------------------------------------
# Labels: one mapping per run, built from the training rows
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelMap:
    """Class names in class-id order. Integer labels are class ids 0..K-1 (names "0".."K-1" unless the
    data names them); any other labels are class names, numbered in sorted order of the training rows."""

    names: tuple[str, ...]
    by_index: bool  # True: the file's labels are class ids; False: they are names

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def fit(cls, train: RawData, num_classes: int | None = None) -> "LabelMap":
        ids = _as_class_ids(train.labels, train.where)
        if ids is not None:
            if (ids < 0).any():
                r = int(np.flatnonzero(ids < 0)[0])
                raise UserError(f"{train.where}: row {r + 1} has the label {ids[r]}; integer labels are class ids "
                                "0..K-1 (shift them, or write class names as text)")
            k = int(num_classes) if num_classes else int(ids.max()) + 1
            if ids.max() >= k:
                r = int(np.argmax(ids))
                raise UserError(f"{train.where}: row {r + 1} has the label {ids[r]}, but data.num_classes is {k}; "
                                f"labels must be class ids 0..{k - 1}")
            if not num_classes and k > MAX_CLASSES_WITHOUT_NUM_CLASSES:
                r = int(np.argmax(ids))
                raise UserError(f"{train.where}: row {r + 1} has the label {ids[r]}, which would make a {k:,}-way "
                                f"classifier; integer labels are class ids 0..K-1: renumber them, write class names "
                                "as text, or set data.num_classes if there really are that many classes")
            names = train.names if train.names and len(train.names) == k else tuple(str(i) for i in range(k))
            if len(np.unique(ids)) < 2:
                raise UserError(f"{train.where}: every training row has the label {ids[0]}; a classifier needs at least 2 classes")
            return cls(names, True)
        names = tuple(sorted(train.labels.astype(str).unique()))
        if len(names) < 2:
            raise UserError(f"{train.where}: every training row has the label {names[0]!r}; a classifier needs at least 2 classes")
        if num_classes and num_classes != len(names):
            raise UserError(f"{train.where}: the training rows name {len(names)} classes ({', '.join(names[:6])}"
                            f"{', ...' if len(names) > 6 else ''}) but data.num_classes is {num_classes}; "
                            "drop data.num_classes or fix the labels")
        return cls(names, False)

    def encode(self, raw: RawData) -> np.ndarray:
        """Class ids of ``raw``'s labels; a label that is not a class of the training rows is refused by name."""
        if self.by_index:
            ids = _as_class_ids(raw.labels, raw.where)
            if ids is None:
                bad = raw.labels[pd.to_numeric(raw.labels, errors="coerce").isna()]
                r = int(bad.index[0]) if len(bad) else 0
                raise UserError(f"{raw.where}: row {r + 1} has the label {raw.labels.iloc[r]!r}, but the training "
                                "labels are integer class ids; use the same kind of labels in both files")
            out = (ids < 0) | (ids >= self.num_classes)
            if out.any():
                r = int(np.flatnonzero(out)[0])
                raise UserError(f"{raw.where}: row {r + 1} has the label {ids[r]}, which is not a class of the training "
                                f"data (class ids 0..{self.num_classes - 1}); drop those rows or fix the label")
            return ids
        index = {n: i for i, n in enumerate(self.names)}
        as_str = raw.labels.astype(str)
        unseen = ~as_str.isin(index)
        if unseen.any():
            r = int(np.flatnonzero(unseen.to_numpy())[0])
            others = sorted(set(as_str[unseen]))
            raise UserError(f"{raw.where}: row {r + 1} has the label {as_str.iloc[r]!r}, which no training row has "
                            f"(training classes: {', '.join(self.names[:8])}{', ...' if len(self.names) > 8 else ''}; "
                            f"unseen: {', '.join(others[:5])}); add it to the training data or drop those rows")
        return as_str.map(index).to_numpy(np.int64)

    def as_json(self) -> dict:
        return {"names": list(self.names), "by_index": self.by_index}


def _as_class_ids(labels: pd.Series, where: str) -> np.ndarray | None:
    """Integer class ids if the labels are integers (or floats holding whole numbers), else None."""
    if pd.api.types.is_bool_dtype(labels):
        return None
    if pd.api.types.is_integer_dtype(labels):
        return labels.to_numpy(np.int64)
    if pd.api.types.is_float_dtype(labels):
        v = labels.to_numpy(np.float64)
        if np.isfinite(v).all() and (v == np.round(v)).all():
            return v.astype(np.int64)
        r = int(np.flatnonzero(~(np.isfinite(v) & (v == np.round(v))))[0])
        raise UserError(f"{where}: row {r + 1} has the label {float(v[r]):g}; labels must be integer class ids or class names")
    return None


def load_user(path: str | Path, split: str = "train", fmt: str | None = None, text_column: str = "text",
              label_column: str = "label", image_shape: list[int] | None = None) -> dict[str, np.ndarray]:
    """Arrays (same layout as :func:`raykd.data.load`) of one user file on its own, labels mapped by
    :class:`LabelMap` fitted on that file. Runs use :func:`raykd.data.prepare`, which maps every split
    with the training file's labels."""
    raw = read_user(path, split, fmt, text_column, label_column, image_shape)
    return {**raw.inputs, "label": LabelMap.fit(raw).encode(raw)}
