"""The distillation metric of Alkhulaifi, Alsahli & Ahmad (PeerJ CS 2021).

    DS = a * (size_s / size_t) + (1 - a) * (1 - acc_s / acc_t)

``a`` in [0, 1] weighs size against accuracy; lower is better, 0 is ideal (a free student that
matches the teacher), and DS is negative when the student beats the teacher by more than its size
costs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SIZE_COLUMNS = {"params": ("params", "teacher_params"), "bytes": ("bytes", "teacher_bytes"), "macs": ("macs", "teacher_macs")}


def distillation_score(size_s: float, size_t: float, acc_s: float, acc_t: float, a: float = 0.5) -> float:
    """DS for one student. Sizes must be > 0, accuracies in [0, 1] with acc_t > 0, a in [0, 1]."""
    if not 0.0 <= a <= 1.0 or math.isnan(a):
        raise ValueError(f"a must be in [0, 1], got {a}")
    if not (size_s > 0 and size_t > 0):
        raise ValueError(f"sizes must be > 0, got student {size_s}, teacher {size_t}")
    if not 0.0 <= acc_s <= 1.0:
        raise ValueError(f"student accuracy must be in [0, 1], got {acc_s}")
    if not 0.0 < acc_t <= 1.0:
        raise ValueError(f"teacher accuracy must be in (0, 1], got {acc_t}")
    return a * (size_s / size_t) + (1.0 - a) * (1.0 - acc_s / acc_t)


def ds_column(df: pd.DataFrame, a: float = 0.5, size: str = "params") -> pd.Series:
    """DS for every row of a results table, re-computed from its columns (no rerun needed)."""
    if size not in SIZE_COLUMNS:
        raise ValueError(f"size must be one of {sorted(SIZE_COLUMNS)}, got {size!r}")
    s_col, t_col = SIZE_COLUMNS[size]
    out = []
    for s, t, acc, tacc in zip(df[s_col], df[t_col], df["accuracy"], df["teacher_accuracy"]):
        ok = all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in (s, t, acc, tacc))
        out.append(distillation_score(float(s), float(t), float(acc), float(tacc), a) if ok and t > 0 and tacc > 0 else np.nan)
    return pd.Series(out, index=df.index, name=f"ds_a{a:g}_{size}")


def leaderboard(df: pd.DataFrame, a: float = 0.5, size: str = "params") -> pd.DataFrame:
    """The table re-ranked by DS for the chosen ``a`` (lower is better)."""
    out = df.copy()
    out["ds"] = ds_column(out, a=a, size=size)
    out["ds_a"] = a
    out["ds_size"] = size
    return out.sort_values(["ds", "accuracy"], ascending=[True, False], na_position="last").reset_index(drop=True)


def pareto_front(df: pd.DataFrame, size: str = "params") -> pd.DataFrame:
    """Rows not dominated in (smaller size, higher accuracy), sorted by size."""
    s_col = SIZE_COLUMNS[size][0]
    d = df.dropna(subset=[s_col, "accuracy"]).sort_values([s_col, "accuracy"], ascending=[True, False])
    keep, best = [], -np.inf
    for idx, acc in zip(d.index, d["accuracy"]):
        if acc > best:
            keep.append(idx)
            best = acc
    return d.loc[keep]
