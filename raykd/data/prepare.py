"""A run's data, ready to train on: train and evaluation splits, one label mapping, normalisation.

:func:`prepare` takes a ``data:`` config section (as a dict) and returns :class:`Prepared`:

* **Splits.** A registered dataset brings its own test split. A user's file is evaluated on
  ``test_path`` when given, else on the file's own test split (IDX ``t10k`` files, a saved
  ``DatasetDict``'s ``test``), else on a seeded, stratified hold-out of ``test_fraction`` of its rows
  that never overlaps the training rows. ``eval_split`` says which, and every results row carries it.
  ``data.validation`` carves a seeded, stratified validation split from the training rows (never
  trained on), on which the engine picks each model's epoch; the test split is then read once, at the end.
* **Labels.** One :class:`~raykd.data.user.LabelMap` per run, fitted on the training rows and applied
  to every split; the class names travel with saved students.
* **Normalisation.** Images are scaled to [0, 1] and normalised per channel with the mean and std of
  this run's training rows (not MNIST's constants for every dataset).

The same config gives the same result in every process (the driver, each Ray worker), so it is
computed once per process and never shipped through Ray.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raykd.data import info, load, stratified_indices, take
from raykd.data.user import LabelMap, RawData, read_user
from raykd.errors import UserError


@dataclass(frozen=True)
class Prepared:
    train: dict[str, np.ndarray]      # {"x": uint8 [N, C, H, W]} or {"text": str [N]}, plus "label": int64 [N]
    test: dict[str, np.ndarray]
    labels: LabelMap                  # class names in class-id order
    eval_split: str                   # which rows the reported accuracy is measured on
    norm: dict | None = None          # images: {"mean": [per channel], "std": [per channel]} of the training rows
    val: dict[str, np.ndarray] | None = None  # data.validation rows carved from the training split (None: not asked)

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    @property
    def kind(self) -> str:
        return "text" if "text" in self.train else "image"

    def describe(self) -> dict:
        """What a saved run records about its data."""
        out = {"eval_split": self.eval_split, "labels": list(self.labels.names), "normalisation": self.norm,
               "n_train": int(len(self.train["label"])), "n_test": int(len(self.test["label"]))}
        if self.val is not None:
            out["n_val"] = int(len(self.val["label"]))
        return out


def prepare(dataset) -> Prepared:
    """The prepared data of a ``data:`` section (a :class:`raykd.config.DataConfig` or its dump); cached per process."""
    if hasattr(dataset, "model_dump"):
        dataset = dataset.model_dump()
    return _prepare(json.dumps(dataset, sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _prepare(key: str) -> Prepared:
    d = json.loads(key)
    if d.get("name") == "user":
        train, test, labels, where = _user_splits(d)
    else:
        train, test = load(d["name"], "train"), load(d["name"], "test")
        ds = info(d["name"])
        labels = LabelMap(ds.class_names or tuple(str(i) for i in range(ds.num_classes)), True)
        where = f"{d['name']} test split"
    seed = int(d.get("split_seed") or 0)
    n_test = len(test["label"])
    train_idx, val_idx = training_rows(train["label"], d)
    val = take(train, val_idx) if val_idx is not None else None
    train = take(train, train_idx) if train_idx is not None else train
    test = _subset(test, d.get("test_subset"), seed)
    if len(test["label"]) < n_test:
        where += f" ({len(test['label']):,} of its {n_test:,} rows, stratified)"
    return Prepared(train, test, labels, where, image_stats(train["x"]) if "x" in train else None, val)


def _subset(arrays: dict, n: int | None, seed: int) -> dict:
    return take(arrays, stratified_indices(arrays["label"], n, seed)) if n is not None and n < len(arrays["label"]) else arrays


def training_rows(labels: np.ndarray, d: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Which rows of the training split are trained on and which are validation rows (``data.validation``:
    a stratified draw seeded by ``split_seed``, carved first; ``train_subset`` then draws from the rest).
    ``None`` for the trained rows: all of them; ``None`` for validation: not asked. The two never overlap."""
    seed, n_val, n_sub = int(d.get("split_seed") or 0), d.get("validation"), d.get("train_subset")
    if n_val is None:
        return (stratified_indices(labels, n_sub, seed) if n_sub is not None and n_sub < len(labels) else None), None
    classes, counts = np.unique(labels, return_counts=True)
    if n_val >= len(labels):
        raise UserError(f"data.validation {n_val}: the training split has {len(labels):,} rows; carve fewer, "
                        "so that rows are left to train on")
    val_idx = stratified_indices(labels, n_val, seed)
    left = np.setdiff1d(np.arange(len(labels)), val_idx)
    empty = [str(c) for c in classes if not np.any(labels[left] == c)]
    if empty:
        raise UserError(f"data.validation {n_val}: leaves no training row of class {', '.join(empty[:5])}; "
                        "carve fewer rows for validation")
    if n_sub is not None and n_sub < len(left):
        left = left[stratified_indices(labels[left], n_sub, seed)]
    return left, val_idx


def _user_splits(d: dict) -> tuple[dict, dict, LabelMap, str]:
    def read(path: str, split: str) -> RawData:
        return read_user(path, split, d.get("format"), d.get("text_column", "text"), d.get("label_column", "label"),
                         d.get("image_shape"))

    train_raw = read(d["path"], "train")
    if d.get("test_path"):
        test_raw, where = read(d["test_path"], "test"), f"test_path {Path(d['test_path']).expanduser()}"
    elif (own := _own_test_split(d)) is not None:
        test_raw, where = read(d["path"], "test"), own
    else:
        frac, seed = float(d.get("test_fraction", 0.2)), int(d.get("split_seed") or 0)
        LabelMap.fit(train_raw, d.get("num_classes"))  # bad labels are reported with the file's own row numbers
        train_raw, test_raw = holdout(train_raw, frac, seed)
        where = f"held-out {frac:g} of {Path(d['path']).expanduser()} (stratified, seed {seed})"
    if _kinds(train_raw) != _kinds(test_raw):
        raise UserError(f"{test_raw.where}: holds {_kinds(test_raw)} but the training data holds {_kinds(train_raw)}; "
                        "use the same columns in both files")
    if "x" in train_raw.inputs and train_raw.inputs["x"].shape[1:] != test_raw.inputs["x"].shape[1:]:
        raise UserError(f"{test_raw.where}: images of shape {list(test_raw.inputs['x'].shape[1:])}, but the training "
                        f"images are {list(train_raw.inputs['x'].shape[1:])}")
    labels = LabelMap.fit(train_raw, d.get("num_classes"))
    return ({**train_raw.inputs, "label": labels.encode(train_raw)},
            {**test_raw.inputs, "label": labels.encode(test_raw)}, labels, where)


def _kinds(raw: RawData) -> str:
    return "text" if "text" in raw.inputs else "images"


def _own_test_split(d: dict) -> str | None:
    """The user's data has its own test split: IDX t10k files, or a saved DatasetDict with a ``test`` split."""
    path = Path(d["path"]).expanduser()
    if not path.is_dir():
        return None
    if any(path.glob("t10k-images-idx3-ubyte*")) and any(path.glob("t10k-labels-idx1-ubyte*")):
        return f"{path} t10k files"
    dd = path / "dataset_dict.json"
    if dd.exists():
        try:
            if "test" in json.loads(dd.read_text()).get("splits", []):
                return f"{path} split 'test'"
        except ValueError:
            raise UserError(f"data.path {dd}: not valid JSON; write the dataset again with save_to_disk") from None
    return None


def holdout(raw: RawData, fraction: float, seed: int) -> tuple[RawData, RawData]:
    """Split ``raw`` into training and held-out rows: ``fraction`` of every class (rounded, at least one
    training row per class), drawn with ``seed``. The two never share a row."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"data.test_fraction {fraction}: must lie strictly between 0 and 1")
    keys = raw.labels.astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(keys):
        rows = np.flatnonzero(keys == c)
        n_test = min(int(round(len(rows) * fraction)), len(rows) - 1)
        test_idx.append(rng.choice(rows, size=n_test, replace=False))
    test_idx = np.sort(np.concatenate(test_idx))
    if len(test_idx) == 0:
        raise UserError(f"{raw.where}: {len(raw)} rows are too few to hold out {fraction:g} of them for evaluation; "
                        "add rows, raise data.test_fraction, or give a test file with data.test_path")
    train_idx = np.setdiff1d(np.arange(len(raw)), test_idx)

    def part(idx: np.ndarray, what: str) -> RawData:
        return RawData(f"{raw.where} ({what})", {k: v[idx] for k, v in raw.inputs.items()},
                       raw.labels.iloc[idx].reset_index(drop=True), raw.names)

    return part(train_idx, "training rows"), part(test_idx, "held-out rows")


def image_stats(x: np.ndarray, chunk: int = 8192) -> dict:
    """Per-channel mean and std of uint8 images scaled to [0, 1]. The sums of pixel values and of their
    squares are exact integers (a few times faster than a float pass over every pixel)."""
    c = x.shape[1]
    s = np.zeros(c, np.int64)
    ss = np.zeros(c, np.int64)
    for i in range(0, len(x), chunk):
        b = x[i:i + chunk].astype(np.int64).transpose(1, 0, 2, 3).reshape(c, -1)
        s += b.sum(axis=1)
        ss += np.einsum("ij,ij->i", b, b)
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / (255.0 * n)
    std = np.sqrt(np.maximum(ss / (255.0 * 255.0 * n) - mean * mean, 0.0))
    return {"mean": [float(m) for m in mean], "std": [float(max(v, 1e-6)) for v in std]}


def fingerprint(data) -> dict:
    """What identifies a run's data (a ``data:`` section): registry name + subsets, or a user file's
    size and mtime (keys of the trained-teacher and teacher-output caches)."""
    if hasattr(data, "model_dump"):
        data = data.model_dump()
    fp = {k: data.get(k) for k in ("name", "train_subset", "test_subset", "max_length", "format",
                                   "text_column", "label_column", "image_shape", "num_classes", "split_seed")}
    if data.get("validation") is not None:  # only then: the keys of runs without one stay as they were
        fp["validation"] = data["validation"]
    if data.get("name") == "user" and not data.get("test_path"):
        fp["test_fraction"] = data.get("test_fraction")  # the hold-out decides which rows are trained on
    for key in ("path", "test_path"):
        if data.get(key):
            p = Path(data[key]).expanduser()
            st = p.stat() if p.exists() else None
            fp[key] = [str(p.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None]
    return fp
